"""Outbound calls to the WeChat Official Account API with aiohttp (wechatpy's own client is synchronous).

- ``GET  /cgi-bin/token``                access token (valid 7200 s; shared through Redis by every process,
                                         because each new token fetched makes the previous one expire soon)
- ``POST /cgi-bin/message/custom/send``  customer-service message (客服消息) within 48 h of the citizen's
                                         last message
- ``POST /cgi-bin/message/template/send``  template message (模板消息) outside that window
- ``GET  /cgi-bin/media/get``            download a temporary media file (voice AMR, image)

An ``errcode`` saying the token is invalid or expired drops the cached token and retries once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from hotline.bodies import parse_json
from hotline.store.conversations import ConversationStore

log = logging.getLogger("hotline.wechat.api")

# invalid credential / invalid access_token / access_token expired
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
# outside the 48-hour window (or unsubscribed) / quota of the window used up / not following the account
WINDOW_ERRORS = frozenset({45015, 45047, 43004})
TOKEN_MARGIN_S = 300  # fetch a new token this long before WeChat says the old one expires
TOKEN_LIFE_S = 7200  # what WeChat documents and always says; a longer claim is not believed
MIN_TOKEN_LIFE_S = 60
UNREADABLE = -1  # the errcode reported for an answer whose errcode is not a number


def errcode_of(data: dict[str, Any], default: int) -> int:
    """The answer's errcode as an int: ``default`` when absent, UNREADABLE when not a 32-bit integer (a far side
    answering "busy", null or 1e999 is failing, and int() of those raises TypeError/ValueError/OverflowError)."""
    if "errcode" not in data:
        return default
    value = data["errcode"]
    if isinstance(value, bool):
        return UNREADABLE
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and -2**31 <= value < 2**31:
        return value
    return UNREADABLE


def token_life_of(data: dict[str, Any]) -> int:
    """``expires_in`` in seconds, within [MIN_TOKEN_LIFE_S, TOKEN_LIFE_S]; the documented life when it is
    missing or no finite number (the token itself is good, and fetching another would expire it)."""
    value = data.get("expires_in", TOKEN_LIFE_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        log.warning("wechat token life unreadable", extra={"event": "wechat_token_life_unreadable"})
        return TOKEN_LIFE_S
    return int(min(max(value, MIN_TOKEN_LIFE_S), TOKEN_LIFE_S))


class WeChatAPIError(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"wechat api error {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatAPI:
    def __init__(self, session: aiohttp.ClientSession, conv: ConversationStore, *, base_url: str, app_id: str,
                 app_secret: str, timeout_s: float = 5.0, max_media_bytes: int = 5 * 1024 * 1024) -> None:
        self.session = session
        self.conv = conv
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.app_secret = app_secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_media_bytes = max_media_bytes
        self._token = ""
        self._token_until = 0.0
        self._lock = asyncio.Lock()
        self.token_fetches = 0

    @property
    def configured(self) -> bool:
        return bool(self.app_id and self.app_secret)

    # access token ------------------------------------------------------------
    async def access_token(self) -> str:
        if self._token and time.monotonic() < self._token_until:
            return self._token
        async with self._lock:
            if self._token and time.monotonic() < self._token_until:
                return self._token
            shared = await self.conv.access_token("wechat")
            if shared:
                # Another process fetched it; we do not know its age, so re-check Redis within a minute.
                self._token, self._token_until = shared, time.monotonic() + 60
                return shared
            params = {"grant_type": "client_credential", "appid": self.app_id, "secret": self.app_secret}
            async with self.session.get(f"{self.base_url}/cgi-bin/token", params=params,
                                        timeout=self.timeout) as resp:
                data = await self._json(resp)
            self.token_fetches += 1
            token = data.get("access_token")
            # WeChat tokens are a few hundred characters; a megabyte would go into Redis and every URL.
            if not isinstance(token, str) or not token or len(token) > 2048:
                raise WeChatAPIError(errcode_of(data, UNREADABLE) or UNREADABLE,
                                     str(data.get("errmsg", "no access_token"))[:200])
            ttl = max(MIN_TOKEN_LIFE_S, token_life_of(data) - TOKEN_MARGIN_S)
            await self.conv.put_access_token("wechat", token, ttl)
            self._token, self._token_until = token, time.monotonic() + ttl
            return token

    async def _drop_token(self, token: str) -> None:
        if self._token == token:
            self._token, self._token_until = "", 0.0
        await self.conv.drop_access_token("wechat", token)

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            buf += chunk
            if len(buf) > limit:
                raise WeChatAPIError(-413, "response too large")
        return bytes(buf)

    @classmethod
    async def _json(cls, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        raw = await cls._read(resp, 1024 * 1024)
        if resp.status >= 400:
            raise WeChatAPIError(-resp.status, f"http {resp.status}")
        try:
            data = parse_json(raw)
        except ValueError as exc:
            raise WeChatAPIError(-1, "response is not JSON") from exc
        if not isinstance(data, dict):
            raise WeChatAPIError(-1, "response is not a JSON object")
        return data

    # calls ---------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # ensure_ascii=False: WeChat shows \uXXXX escapes literally instead of the Chinese text.
        payload = json.dumps(body, ensure_ascii=False).encode()
        for attempt in (1, 2):
            token = await self.access_token()
            async with self.session.post(f"{self.base_url}{path}", params={"access_token": token}, data=payload,
                                         headers={"Content-Type": "application/json; charset=utf-8"},
                                         timeout=self.timeout) as resp:
                data = await self._json(resp)
            code = errcode_of(data, 0)
            if code in TOKEN_ERRORS and attempt == 1:
                await self._drop_token(token)
                continue
            if code:
                raise WeChatAPIError(code, str(data.get("errmsg", ""))[:200])
            return data
        raise AssertionError("unreachable")

    async def send_text(self, openid: str, text: str) -> None:
        """A customer-service text message; raises WeChatAPIError (errcode in WINDOW_ERRORS: window closed)."""
        await self._post("/cgi-bin/message/custom/send",
                         {"touser": openid, "msgtype": "text", "text": {"content": text}})

    async def send_template(self, openid: str, template_id: str, data: dict[str, str], url: str = "") -> None:
        """A template message (模板消息): no 48-hour window, but only to followers and only this template's
        fields; raises WeChatAPIError (43004: the citizen unfollowed)."""
        body: dict[str, object] = {"touser": openid, "template_id": template_id,
                                   "data": {k: {"value": v} for k, v in data.items()}}
        if url:
            body["url"] = url
        await self._post("/cgi-bin/message/template/send", body)

    async def get_media(self, media_id: str) -> bytes:
        """A temporary media file (voice messages: AMR); an errcode JSON answer raises WeChatAPIError."""
        for attempt in (1, 2):
            token = await self.access_token()
            async with self.session.get(f"{self.base_url}/cgi-bin/media/get",
                                        params={"access_token": token, "media_id": media_id},
                                        timeout=self.timeout) as resp:
                ctype = resp.headers.get("Content-Type", "")
                if resp.status >= 400:
                    raise WeChatAPIError(-resp.status, f"http {resp.status}")
                if ctype.startswith(("application/json", "text/plain")):
                    data = await self._json(resp)
                    # A JSON answer instead of the file is a failure even when it says errcode 0.
                    code = errcode_of(data, UNREADABLE) or UNREADABLE
                    if code in TOKEN_ERRORS and attempt == 1:
                        await self._drop_token(token)
                        continue
                    raise WeChatAPIError(code, str(data.get("errmsg", ""))[:200])
                return await self._read(resp, self.max_media_bytes)
        raise AssertionError("unreachable")
