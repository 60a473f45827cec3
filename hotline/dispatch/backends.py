"""Where work orders go: an Open311 GeoReport v2 endpoint, a signed JSON webhook, or the Redis stream.

A backend's ``deliver`` returns the backend's own id of the order when it accepted it, raises
``TransientError`` for anything worth retrying (network, timeout, 5xx, 408, 429) and ``PermanentError``
when retrying cannot help (the backend refused the order as such). Every request carries the order's
idempotency key — as the ``Idempotency-Key`` header and, for Open311, as ``attribute[hotline_order_id]`` —
so a backend can recognise a retry of an order it already created.

Redirects are never followed. A redirected POST was not accepted (a 302 to a login page answers 200 with
HTML), and following a 307 would send the order — citizen's name and number, the Open311 ``api_key``, the
webhook signature — to whatever host the ``Location`` names. Error messages end up in logs, dead letters
and the supervisors' page, so they never carry a URL's query string (where Open311 puts ``api_key``) nor
the key itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from yarl import URL

from hotline.bodies import parse_json
from hotline.dispatch.signing import sign_headers
from hotline.dispatch.tables import DispatchTables

IDEMPOTENCY_HEADER = "Idempotency-Key"
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 415, 422})
MAX_RESPONSE_BYTES = 1 << 20
NO_ADDRESS = "（市民未提供地址）"


class DeliveryError(Exception):
    pass


class TransientError(DeliveryError):
    pass


class PermanentError(DeliveryError):
    pass


@dataclass
class Delivery:
    ref: str  # the backend's id of the order ('' when it has none)
    detail: dict[str, Any]


class Backend(Protocol):
    name: str

    async def deliver(self, order: dict[str, Any], key: str) -> Delivery: ...


_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>]*")


def _scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Text from aiohttp or from the backend's error page, fit for a log line: error pages and aiohttp's
    own messages echo the request URL, whose query holds Open311's ``api_key``."""
    text = _QUERY_IN_TEXT.sub("?…", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _where(location: str) -> str:
    """A redirect target for a message: scheme, host and path only (its query may hold the key)."""
    try:
        url = URL(location)
        if url.is_absolute():
            url = url.with_user(None).with_password(None)
        return str(url.with_query(None).with_fragment(None)) or "(none)"
    except (ValueError, TypeError):
        return "(unreadable Location)"


def _status_error(status: int, text: str, secrets: tuple[str, ...] = ()) -> DeliveryError:
    msg = _scrub(f"HTTP {status}: {text[:300]}", secrets)
    return PermanentError(msg) if status in PERMANENT_STATUSES else TransientError(msg)


def _redirect_error(status: int, location: str, secrets: tuple[str, ...] = (),
                    then: str = "; fix it, then redrive") -> PermanentError:
    # Permanent, not transient: a redirect is how the endpoint is set up (http→https, a moved host, a
    # login proxy in front), so every retry meets the same answer, and max_attempts of backoff would only
    # hide it for hours while cases wait. A dead letter names the cause on the 督办 page at once; after a
    # person fixes dispatch.url, redrive --all sends the orders again under the same idempotency keys.
    return PermanentError(_scrub(f"HTTP {status} redirect to {_where(location)}: dispatch.url must be the "
                                 f"endpoint itself{then}", secrets))


def _client_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> TransientError:
    if isinstance(exc, TimeoutError):
        return TransientError("timeout")
    if isinstance(exc, aiohttp.InvalidURL):
        return TransientError(type(exc).__name__)  # its whole message is the URL
    if isinstance(exc, aiohttp.ClientResponseError):
        # str() of these includes the request URL; the status says what is needed.
        return TransientError(f"{type(exc).__name__}: HTTP {exc.status}")
    return TransientError(_scrub(f"{type(exc).__name__}: {exc}", secrets))


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than ``limit``. ``content.read(n)`` returns after the
    first chunk that arrived, which cut a JSON answer sent in two chunks in half."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


async def _post(session: aiohttp.ClientSession, url: str, timeout_s: float, secrets: tuple[str, ...] = (),
                **kwargs: Any) -> tuple[int, str | None]:
    """(status, body text); the text is None when the body is over MAX_RESPONSE_BYTES."""
    try:
        async with session.post(url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False,
                                **kwargs) as resp:
            if 300 <= resp.status < 400:
                raise _redirect_error(resp.status, resp.headers.get("Location", ""), secrets)
            body = await _read_limited(resp, MAX_RESPONSE_BYTES)
            return resp.status, None if body is None else body.decode("utf-8", "replace")
    except TimeoutError as exc:
        raise TransientError(f"timeout after {timeout_s:g} s") from exc
    except aiohttp.ClientError as exc:
        raise _client_error(exc, secrets) from exc


def _ref(value: Any) -> str:
    """A backend's id of an order: a string or an integer, else none (a nested object is no id)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)[:200]


class Open311Backend:
    """POST {url}/requests.json as application/x-www-form-urlencoded (GeoReport v2)."""

    name = "open311"

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str, tables: DispatchTables,
                 timeout_s: float) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.tables = tables
        self.timeout_s = timeout_s

    def service_code(self, order: dict[str, Any]) -> str:
        path = order.get("category_path") or [order.get("category", "")]
        return DispatchTables.lookup(self.tables.service_codes, path) or self.tables.default_service_code

    def form(self, order: dict[str, Any], key: str) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = [("service_code", self.service_code(order))]
        if self.api_key:
            fields.append(("api_key", self.api_key))
        loc = order.get("location")
        if loc:
            fields += [("lat", f"{loc['lat']:.7f}"), ("long", f"{loc['lon']:.7f}")]
        # GeoReport v2 needs a location: the address, else the street, else a marker that none was given.
        fields.append(("address_string", order.get("address") or order.get("street") or NO_ADDRESS))
        fields.append(("description", order.get("description", "")[:4000]))
        citizen = order.get("citizen") or {}
        if citizen.get("contact"):
            fields.append(("phone", citizen["contact"]))
        if citizen.get("name"):
            fields.append(("last_name", citizen["name"]))
        attachments = order.get("attachments") or []
        if attachments and str(attachments[0]).startswith(("http://", "https://")):
            fields.append(("media_url", attachments[0]))
        attrs = {
            "hotline_order_id": key,
            "hotline_case_id": order.get("case_id", ""),
            "round": str(order.get("round", "")),
            "redo": "1" if order.get("redo") else "0",
            "redo_reason": order.get("redo_reason", ""),
            "category": "/".join(order.get("category_path") or []) or order.get("category", ""),
            "lead_department": order.get("lead_department", ""),
            "co_departments": ",".join(order.get("co_departments") or []),
            "street": order.get("street", ""),
            "request_type": order.get("request_type", ""),
            "urgency": order.get("urgency", ""),
            "deadline": order.get("deadline", ""),
            "reporters": str(order.get("reporters", 1)),
            "channel": order.get("channel", ""),
            "attachments": ",".join(attachments),
            # The unit must tell a contact withheld at the citizen's request from one never given.
            "confidential": "1" if order.get("confidential") else "",
        }
        fields += [(f"attribute[{k}]", v) for k, v in attrs.items() if v != ""]
        return fields

    async def deliver(self, order: dict[str, Any], key: str) -> Delivery:
        secrets = (self.api_key,)
        status, text = await _post(self.session, f"{self.url}/requests.json", self.timeout_s, secrets,
                                   data=self.form(order, key), headers={IDEMPOTENCY_HEADER: key})
        if not 200 <= status < 300:
            raise _status_error(status, text or "", secrets)
        # From here on the backend has accepted the order: an answer we cannot read is still an accepted
        # order without a ref, since retrying would create a second order there.
        if text is None:
            return Delivery("", {"warning": f"response over {MAX_RESPONSE_BYTES} bytes"})
        try:
            body = parse_json(text)
        except ValueError as exc:
            return Delivery("", {"warning": f"unreadable response: {exc}"})
        first = body[0] if isinstance(body, list) and body else body
        if not isinstance(first, dict):
            return Delivery("", {"warning": f"unexpected response: {type(first).__name__} where an object "
                                            f"was expected"})
        ref = _ref(first.get("service_request_id"))
        token = _ref(first.get("token"))
        return Delivery(ref, {"token": token} if token and not ref else {})

    async def fetch(self, ref: str) -> dict[str, Any] | None:
        """GET {url}/requests/{id}.json: the backend's current view of one order (polling)."""
        secrets = (self.api_key,)
        params = {"api_key": self.api_key} if self.api_key else None
        # The ref is the backend's own text: quoted, a "/", "?" or "#" in it cannot reach another path.
        url = f"{self.url}/requests/{quote(ref, safe='')}.json"
        try:
            async with self.session.get(url, params=params, allow_redirects=False,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                if resp.status == 404:
                    return None
                if 300 <= resp.status < 400:
                    raise _redirect_error(resp.status, resp.headers.get("Location", ""), secrets, then="")
                if resp.status != 200:
                    raise _status_error(resp.status, (await resp.content.read(2000)).decode("utf-8", "replace"),
                                        secrets)
                raw = await _read_limited(resp, MAX_RESPONSE_BYTES)
                if raw is None:
                    raise TransientError(f"response over {MAX_RESPONSE_BYTES} bytes")
                body = parse_json(raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _client_error(exc, secrets) from exc
        except ValueError as exc:
            raise TransientError(f"unreadable response: {type(exc).__name__}") from exc
        if isinstance(body, list):
            body = body[0] if body else None
        return body if isinstance(body, dict) else None


class WebhookBackend:
    """POST the order as JSON, signed with HMAC-SHA256 (see hotline/dispatch/signing.py)."""

    name = "webhook"

    def __init__(self, session: aiohttp.ClientSession, url: str, secret: str, timeout_s: float) -> None:
        self.session = session
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s

    async def deliver(self, order: dict[str, Any], key: str) -> Delivery:
        body = json.dumps(order, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key, **sign_headers(self.secret, body)}
        status, text = await _post(self.session, self.url, self.timeout_s, data=body, headers=headers)
        if not 200 <= status < 300:
            raise _status_error(status, text or "")
        try:
            answer = parse_json(text) if text and text.strip() else {}
        except ValueError:
            answer = {}
        ref = _ref(answer.get("id") or answer.get("ref")) if isinstance(answer, dict) else ""
        return Delivery(ref, {})


async def wait_closed(session: aiohttp.ClientSession) -> None:
    await session.close()
    # Let the connector's transports close before the loop goes away (aiohttp's documented pause).
    await asyncio.sleep(0)
