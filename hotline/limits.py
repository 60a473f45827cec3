"""Per-source rate limits of the public doors: 429 with Retry-After once a client used its budget.

Requests are counted per client address in fixed one-minute windows held in Redis
(hotline/store/limits.py), so several processes behind one address share one budget. A fixed window
lets a client send up to twice the limit across a window boundary; that is acceptable for abuse
control and costs one Redis round trip per limited request.

When Redis is away the limit is not enforced (fail open): the doors answer 503 by themselves then,
and a limiter that refused everyone would add nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from redis.exceptions import RedisError

from hotline.appkeys import SETTINGS, STORE
from hotline.store import StoreUnavailable
from hotline.store.limits import RateCounters

log = logging.getLogger("hotline.limits")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

WINDOW_S = 60

# (method, route pattern) → limit group. Route patterns, not raw paths: /survey/<token> is one door.
# A HEAD request counts as the GET it stands for (``_method``): aiohttp's ``add_get`` answers HEAD as well,
# and its status alone (200 or 404) is enough to guess a case's phone digits.
ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/complaints"): "submit",
    ("POST", "/submit"): "submit",
    ("POST", "/open311/v2/requests.json"): "submit",
    ("GET", "/status"): "lookup",
    ("POST", "/status"): "lookup",
    ("GET", "/api/v1/cases/{case_id}"): "lookup",
    ("GET", "/open311/v2/requests/{case_id}.json"): "lookup",
    ("GET", "/survey/{token}"): "survey",
    ("POST", "/survey/{token}"): "survey",
}


@dataclass(frozen=True)
class LimitConfig:
    enabled: bool
    per_minute: dict[str, int]
    exempt: tuple[Network, ...]
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def from_settings(cls, section: dict) -> LimitConfig:
        def nets(values: list[str]) -> tuple[Network, ...]:
            return tuple(ipaddress.ip_network(v, strict=False) for v in values)

        return cls(
            enabled=bool(section["enabled"]),
            per_minute={"submit": section["submit_per_minute"], "lookup": section["lookup_per_minute"],
                        "survey": section["survey_per_minute"]},
            exempt=nets(section["exempt"]),
            trusted_proxies=nets(section["trusted_proxies"]),
        )


LIMITS = web.AppKey("limits", LimitConfig)
COUNTERS = web.AppKey("rate_counters", RateCounters)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The peer, or behind trusted proxies the right-most X-Forwarded-For hop that is not one of them.

    Right-most, because a client can write anything into the left part of the header itself.
    """
    peer = request.remote or ""
    addr = _ip(peer)
    if addr is None or not trusted or not any(addr in n for n in trusted):
        return peer
    hops = [h for part in request.headers.getall("X-Forwarded-For", []) for h in part.split(",")]
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return peer  # garbage from outside the proxy: count it against the proxy's own address
        if not any(hop_ip in n for n in trusted):
            return str(hop_ip)
    return peer


def gate_address(request: web.Request) -> str:
    """The address an allow list judges (``voice.pbx_allow``, ``metrics.allow``): the client as the rate limits
    see it, so that behind ``limits.trusted_proxies`` it is the forwarded client, not the proxy on loopback that
    every request comes from. "" (refused) when a trusted proxy forwarded an address that cannot be read: allow
    lists fail closed where the rate limits fail open."""
    cfg = request.app.get(LIMITS) or LimitConfig.from_settings(request.app[SETTINGS]["limits"])
    trusted = cfg.trusted_proxies
    peer = _ip(request.remote or "")
    if peer is not None and any(peer in n for n in trusted):
        hops = [h for part in request.headers.getall("X-Forwarded-For", []) for h in part.split(",")]
        if any(_ip(h) is None for h in hops):
            return ""
    return client_address(request, trusted)


def address_allowed(request: web.Request, networks: list[str]) -> bool:
    """Whether ``gate_address`` lies in one of ``networks`` (CIDR strings); False for an unreadable address."""
    addr = _ip(gate_address(request))
    if addr is None:
        return False
    try:
        return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)
    except ValueError:
        return False


def _exempt(address: str, exempt: tuple[Network, ...]) -> bool:
    addr = _ip(address)
    return addr is not None and any(addr in n for n in exempt)


def _method(request: web.Request) -> str:
    return "GET" if request.method == "HEAD" else request.method


def _route(request: web.Request) -> str:
    resource = getattr(getattr(request.match_info, "route", None), "resource", None)
    return resource.canonical if resource is not None else ""


@web.middleware
async def limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cfg = request.app.get(LIMITS)
    group = ROUTES.get((_method(request), _route(request))) if cfg is not None and cfg.enabled else None
    limit = cfg.per_minute.get(group, 0) if group and cfg else 0
    counters = request.app.get(COUNTERS)
    if not limit or counters is None or cfg is None:
        return await handler(request)
    address = client_address(request, cfg.trusted_proxies)
    if _exempt(address, cfg.exempt):
        return await handler(request)
    now = time.time()
    window = int(now // WINDOW_S)
    # Addresses are personal data: Redis keeps a digest only.
    source = hashlib.sha256(address.encode()).hexdigest()[:20]
    try:
        count = await counters.hit(group, source, window, WINDOW_S)
    except (*StoreUnavailable, RedisError):
        return await handler(request)
    if count <= limit:
        return await handler(request)
    from hotline.app import error_response  # the app module imports this feature list; import at use

    retry_after = max(1, int((window + 1) * WINDOW_S - now + 0.999))
    log.warning("rate limited", extra={"event": "rate_limited", "group": group, "path": request.path})
    return error_response(request, 429, "too_many_requests", f"请求过于频繁，请 {retry_after} 秒后再试。",
                          {"Retry-After": str(retry_after)})


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    app[COUNTERS] = RateCounters(app[STORE])
    yield


def setup(app: web.Application) -> None:
    app[LIMITS] = LimitConfig.from_settings(app[SETTINGS]["limits"])
    app.middlewares.append(limits_middleware)
    app.cleanup_ctx.append(limits_ctx)

