"""Where work orders go: an Open311 GeoReport v2 endpoint, a signed JSON webhook, or the Redis stream.

A backend's ``deliver`` returns the backend's own id of the order when it accepted it, raises
``TransientError`` for anything worth retrying (network, timeout, 5xx, 408, 429) and ``PermanentError``
when retrying cannot help (the backend refused the order as such). Every request carries the order's
idempotency key — as the ``Idempotency-Key`` header and, for Open311, as ``attribute[hotline_order_id]`` —
so a backend can recognise a retry of an order it already created.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

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


def _status_error(status: int, text: str) -> DeliveryError:
    msg = f"HTTP {status}: {text[:300]}"
    return PermanentError(msg) if status in PERMANENT_STATUSES else TransientError(msg)


async def _post(session: aiohttp.ClientSession, url: str, timeout_s: float, **kwargs: Any) -> tuple[int, str]:
    try:
        async with session.post(url, timeout=aiohttp.ClientTimeout(total=timeout_s), **kwargs) as resp:
            body = await resp.content.read(MAX_RESPONSE_BYTES)
            return resp.status, body.decode("utf-8", "replace")
    except TimeoutError as exc:
        raise TransientError(f"timeout after {timeout_s:g} s") from exc
    except aiohttp.ClientError as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc


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
        }
        fields += [(f"attribute[{k}]", v) for k, v in attrs.items() if v != ""]
        return fields

    async def deliver(self, order: dict[str, Any], key: str) -> Delivery:
        status, text = await _post(self.session, f"{self.url}/requests.json", self.timeout_s,
                                   data=self.form(order, key), headers={IDEMPOTENCY_HEADER: key})
        if not 200 <= status < 300:
            raise _status_error(status, text)
        try:
            body = parse_json(text)
        except ValueError as exc:
            # Accepted with a body we cannot read: retrying would create a second order.
            return Delivery("", {"warning": f"unreadable response: {exc}"})
        first = body[0] if isinstance(body, list) and body else body if isinstance(body, dict) else {}
        ref = str(first.get("service_request_id") or "")
        token = str(first.get("token") or "")
        return Delivery(ref, {"token": token} if token and not ref else {})

    async def fetch(self, ref: str) -> dict[str, Any] | None:
        """GET {url}/requests/{id}.json: the backend's current view of one order (polling)."""
        params = {"api_key": self.api_key} if self.api_key else None
        try:
            async with self.session.get(f"{self.url}/requests/{ref}.json", params=params,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise _status_error(resp.status, (await resp.content.read(2000)).decode("utf-8", "replace"))
                body = parse_json(await resp.content.read(MAX_RESPONSE_BYTES))
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
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
            raise _status_error(status, text)
        try:
            answer = parse_json(text) if text.strip() else {}
        except ValueError:
            answer = {}
        ref = str(answer.get("id") or answer.get("ref") or "") if isinstance(answer, dict) else ""
        return Delivery(ref, {})


async def wait_closed(session: aiohttp.ClientSession) -> None:
    await session.close()
    # Let the connector's transports close before the loop goes away (aiohttp's documented pause).
    await asyncio.sleep(0)
