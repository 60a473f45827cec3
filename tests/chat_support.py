"""Loopback doubles of the far side of the chat doors, speaking the real wire formats.

- ``FakeBotAPI``: the Telegram Bot API (``/bot<token>/<method>`` with form-encoded parameters as PTB sends
  them, ``{"ok": true, "result": …}`` answers, ``/file/bot<token>/<path>`` downloads, long-polled getUpdates).
- ``FakeWeChatAPI``: the Official Account API (``/cgi-bin/token``, ``/cgi-bin/message/custom/send``,
  ``/cgi-bin/media/get``) with errcode answers for bad tokens and closed windows.
- WeChat push builders: signatures and AES safe mode written here from the published algorithm (not with
  wechatpy), so the server's use of wechatpy is checked against an independent implementation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree as SafeET

from tests.ivr_support import espeak

# ---------------------------------------------------------------------------- Telegram Bot API


@dataclass
class BotCall:
    method: str
    params: dict[str, Any]


class FakeBotAPI:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[BotCall] = []
        self.files: dict[str, bytes] = {}
        self.updates: list[dict[str, Any]] = []
        self.blocked_chats: set[int] = set()
        # A file server that misbehaves: getFile without file_size (it is optional in the Bot API), a body
        # sent in chunks without Content-Length, or one that never ends (a trickle every endless_interval_s).
        self.hidden_sizes: set[str] = set()
        self.chunked_files: set[str] = set()
        self.endless_files: set[str] = set()
        self.endless_interval_s = 0.1
        self.file_bytes_sent = 0
        self.new_call = asyncio.Condition()
        self._message_id = 100
        self.app = web.Application()
        self.app.router.add_route("*", "/bot{token}/{method}", self._method)
        self.app.router.add_get("/file/bot{token}/{path:.+}", self._file)

    # what the bot did ---------------------------------------------------------
    def sent(self, method: str = "sendMessage", chat_id: int | None = None) -> list[dict[str, Any]]:
        return [c.params for c in self.calls if c.method == method
                and (chat_id is None or int(c.params.get("chat_id", 0)) == chat_id)]

    async def wait_for(self, method: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with self.new_call:
            await asyncio.wait_for(self.new_call.wait_for(lambda: len(self.sent(method)) >= count), timeout)
        return self.sent(method)

    # wire ------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            return await request.json()
        form = await request.post()
        out: dict[str, Any] = {}
        for key, value in form.items():
            if not isinstance(value, str):
                continue
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def _ok(self, result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    def _err(self, code: int, description: str) -> web.Response:
        return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._err(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        if method != "getUpdates":
            self.calls.append(BotCall(method, params))
            async with self.new_call:
                self.new_call.notify_all()
        if method == "getMe":
            return self._ok({"id": 7000001, "is_bot": True, "first_name": "一号通", "username": "hotline_test_bot",
                             "can_join_groups": False, "can_read_all_group_messages": False,
                             "supports_inline_queries": False})
        if method in ("sendMessage", "editMessageReplyMarkup"):
            chat_id = int(params.get("chat_id", 0))
            if chat_id in self.blocked_chats:
                return self._err(403, "Forbidden: bot was blocked by the user")
            self._message_id += 1
            return self._ok({"message_id": self._message_id, "date": int(time.time()),
                             "chat": {"id": chat_id, "type": "private"},
                             "from": {"id": 7000001, "is_bot": True, "first_name": "一号通"},
                             "text": params.get("text", "")})
        if method in ("answerCallbackQuery", "setWebhook", "deleteWebhook"):
            return self._ok(True)
        if method == "getFile":
            file_id = str(params.get("file_id", ""))
            if file_id not in self.files and file_id not in self.endless_files:
                return self._err(400, "Bad Request: invalid file_id")
            result: dict[str, Any] = {"file_id": file_id, "file_unique_id": f"u{file_id}",
                                      "file_path": f"voice/{file_id}.oga"}
            if file_id in self.files and file_id not in self.hidden_sizes:
                result["file_size"] = len(self.files[file_id])
            return self._ok(result)
        if method == "getUpdates":
            offset = int(params.get("offset", 0) or 0)
            deadline = time.monotonic() + min(float(params.get("timeout", 0) or 0), 1.0)
            while True:
                ready = [u for u in self.updates if u["update_id"] >= offset]
                if ready or time.monotonic() >= deadline:
                    return self._ok(ready)
                await asyncio.sleep(0.05)
        return self._err(404, "Not Found")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        file_id = path.removeprefix("voice/").removesuffix(".oga")
        if file_id in self.endless_files or file_id in self.chunked_files:
            resp = web.StreamResponse(headers={"Content-Type": "audio/ogg"})
            await resp.prepare(request)
            try:
                if file_id in self.endless_files:
                    while True:
                        await resp.write(b"\0" * 1024)
                        self.file_bytes_sent += 1024
                        await asyncio.sleep(self.endless_interval_s)
                data = self.files[file_id]
                for at in range(0, len(data), 16384):
                    await resp.write(data[at:at + 16384])
                    self.file_bytes_sent += len(data[at:at + 16384])
            except ConnectionError:
                pass  # the client stopped reading: what a capped download does
            return resp
        if file_id not in self.files:
            return web.Response(status=404)
        self.file_bytes_sent += len(self.files[file_id])
        return web.Response(body=self.files[file_id], content_type="audio/ogg")


def tg_user(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "is_bot": False, "first_name": "市民", "language_code": "zh-hans"}


def tg_chat(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "type": "private", "first_name": "市民"}


def tg_message(update_id: int, chat_id: int, **content: Any) -> dict[str, Any]:
    msg = {"message_id": update_id * 10, "date": int(time.time()), "chat": tg_chat(chat_id),
           "from": tg_user(chat_id), **content}
    if "text" in content and str(content["text"]).startswith("/"):
        cmd = str(content["text"]).split()[0]
        msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(cmd)}]
    return {"update_id": update_id, "message": msg}


def tg_callback(update_id: int, chat_id: int, data: str, message_id: int = 1) -> dict[str, Any]:
    return {"update_id": update_id, "callback_query": {
        "id": f"cq{update_id}", "from": tg_user(chat_id), "chat_instance": f"ci{chat_id}", "data": data,
        "message": {"message_id": message_id, "date": int(time.time()), "chat": tg_chat(chat_id),
                    "from": {"id": 7000001, "is_bot": True, "first_name": "一号通"}, "text": "…"}}}


# ---------------------------------------------------------------------------- WeChat API


class FakeWeChatAPI:
    def __init__(self, app_id: str, app_secret: str) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.valid_tokens: set[str] = set()
        self.token_requests = 0
        self.sent: list[dict[str, Any]] = []
        self.raw_bodies: list[bytes] = []
        self.media: dict[str, bytes] = {}
        self.media_fetches: list[str] = []
        self.media_delay_s = 0.0
        self.closed_window: set[str] = set()
        self.templates: list[dict[str, Any]] = []
        self.unfollowed: set[str] = set()
        # Path → raw body answered instead (after the token check): answers of the wrong shape. For
        # /cgi-bin/token, an access_token in it is then accepted by the other endpoints.
        self.raw_answers: dict[str, str] = {}
        self.arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/cgi-bin/token", self._token)
        self.app.router.add_post("/cgi-bin/message/custom/send", self._send)
        self.app.router.add_post("/cgi-bin/message/template/send", self._template)
        self.app.router.add_get("/cgi-bin/media/get", self._media)

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {count} customer-service messages, got {len(self.sent)}")
            await asyncio.sleep(0.05)
        return self.sent

    async def _token(self, request: web.Request) -> web.Response:
        q = request.query
        self.token_requests += 1
        raw = self.raw_answers.get(request.path)
        if raw is not None:
            try:
                token = json.loads(raw).get("access_token")
            except (ValueError, AttributeError):
                token = None
            if isinstance(token, str):
                self.valid_tokens.add(token)
            return web.Response(text=raw, content_type="application/json")
        if q.get("grant_type") != "client_credential" or q.get("appid") != self.app_id \
                or q.get("secret") != self.app_secret:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        token = f"ACCESS_{secrets.token_hex(8)}"
        self.valid_tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": 7200})

    def _token_ok(self, request: web.Request) -> bool:
        return request.query.get("access_token", "") in self.valid_tokens

    async def _send(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        if request.path in self.raw_answers:
            return web.Response(text=self.raw_answers[request.path], content_type="application/json")
        raw = await request.read()
        self.raw_bodies.append(raw)
        body = json.loads(raw)
        if body.get("touser") in self.closed_window:
            return web.json_response({"errcode": 45015, "errmsg": "response out of time limit"})
        self.sent.append(body)
        self.arrived.set()
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _template(self, request: web.Request) -> web.Response:
        """模板消息: no 48-hour window; refused for an unknown template, a bad body or a non-follower."""
        if not self._token_ok(request):
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        body = json.loads(await request.read())
        if not isinstance(body.get("template_id"), str) or not body["template_id"].startswith("TPL"):
            return web.json_response({"errcode": 40037, "errmsg": "invalid template_id"})
        data = body.get("data")
        if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("value"), str)
                                                 for v in data.values()):
            return web.json_response({"errcode": 47001, "errmsg": "data format error"})
        if body.get("touser") in self.unfollowed:
            return web.json_response({"errcode": 43004, "errmsg": "require subscribe"})
        self.templates.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": len(self.templates)})

    async def _media(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        if request.path in self.raw_answers:
            return web.Response(text=self.raw_answers[request.path], content_type="application/json")
        media_id = request.query.get("media_id", "")
        self.media_fetches.append(media_id)
        if media_id not in self.media:
            return web.json_response({"errcode": 40007, "errmsg": "invalid media_id"})
        if self.media_delay_s:
            await asyncio.sleep(self.media_delay_s)
        return web.Response(body=self.media[media_id], content_type="audio/amr",
                            headers={"Content-disposition": f'attachment; filename="{media_id}.amr"'})


# ---------------------------------------------------------------------------- WeChat pushes


def wx_sign(*parts: str) -> str:
    """SHA-1 of the lexicographically sorted parts, concatenated (WeChat's signature)."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def cdata(value: str) -> str:
    return f"<![CDATA[{value}]]>"


def wx_xml(openid: str, msg_type: str, create_time: int | None = None, msg_id: int | None = None,
           to: str = "gh_hotline", **fields_: str) -> str:
    parts = [f"<ToUserName>{cdata(to)}</ToUserName>", f"<FromUserName>{cdata(openid)}</FromUserName>",
             f"<CreateTime>{create_time or int(time.time())}</CreateTime>", f"<MsgType>{cdata(msg_type)}</MsgType>"]
    for name, value in fields_.items():
        parts.append(f"<{name}>{cdata(value)}</{name}>")
    if msg_id is not None:
        parts.append(f"<MsgId>{msg_id}</MsgId>")
    return "<xml>" + "".join(parts) + "</xml>"


def aes_key_bytes(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def wx_encrypt(encoding_aes_key: str, app_id: str, plain: str) -> str:
    """random(16) + len(4, network order) + msg + appid, PKCS#7 to 32 bytes, AES-256-CBC, IV = key[:16]."""
    key = aes_key_bytes(encoding_aes_key)
    msg = plain.encode()
    data = os.urandom(16) + struct.pack(">I", len(msg)) + msg + app_id.encode()
    pad = 32 - len(data) % 32
    data += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def wx_decrypt(encoding_aes_key: str, encrypted: str) -> tuple[str, str]:
    key = aes_key_bytes(encoding_aes_key)
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    data = dec.update(base64.b64decode(encrypted)) + dec.finalize()
    data = data[: -data[-1]]
    (length,) = struct.unpack(">I", data[16:20])
    return data[20:20 + length].decode(), data[20 + length:].decode()


@dataclass
class WeChatPusher:
    """Signs (and in safe mode encrypts) pushes as the WeChat platform does."""

    token: str
    aes_key: str = ""
    app_id: str = ""
    path: str = "/wechat"
    now: float | None = None
    sent: list[str] = field(default_factory=list)

    def plain(self, xml: str, *, timestamp: str | None = None, nonce: str | None = None,
              signature: str | None = None) -> tuple[dict[str, str], bytes]:
        ts = timestamp or str(int(self.now or time.time()))
        nonce = nonce or secrets.token_hex(5)
        sig = signature if signature is not None else wx_sign(self.token, ts, nonce)
        params = {"signature": sig, "timestamp": ts, "nonce": nonce, "openid": "o"}
        return params, xml.encode()

    def encrypted(self, xml: str, *, timestamp: str | None = None, nonce: str | None = None,
                  msg_signature: str | None = None, app_id: str | None = None) -> tuple[dict[str, str], bytes]:
        ts = timestamp or str(int(self.now or time.time()))
        nonce = nonce or secrets.token_hex(5)
        encrypt = wx_encrypt(self.aes_key, app_id if app_id is not None else self.app_id, xml)
        msig = msg_signature if msg_signature is not None else wx_sign(self.token, ts, nonce, encrypt)
        params = {"signature": wx_sign(self.token, ts, nonce), "timestamp": ts, "nonce": nonce,
                  "encrypt_type": "aes", "msg_signature": msig, "openid": "o"}
        body = f"<xml><ToUserName>{cdata('gh_hotline')}</ToUserName><Encrypt>{cdata(encrypt)}</Encrypt></xml>"
        return params, body.encode()

    def read_reply(self, body: str, *, encrypted: bool = False) -> dict[str, str]:
        """A passive reply as a dict of its fields ({} for "success"); checks the reply's own signature."""
        if body.strip() in ("success", ""):
            return {}
        root = SafeET.fromstring(body)
        values = {c.tag: (c.text or "") for c in root}
        if encrypted:
            sig = wx_sign(self.token, values["TimeStamp"], values["Nonce"], values["Encrypt"])
            assert sig == values["MsgSignature"], "reply signature does not verify"
            plain, app_id = wx_decrypt(self.aes_key, values["Encrypt"])
            assert app_id == self.app_id
            values = {c.tag: (c.text or "") for c in SafeET.fromstring(plain)}
        return values


def voice_file(pinyin: str, fmt: str) -> bytes:
    """Mandarin speech from espeak-ng as a real audio file (ffmpeg), e.g. fmt "ogg" (Opus) or "wav"."""
    pcm = espeak(pinyin, 16000)
    codec = ["-c:a", "libopus"] if fmt == "ogg" else []
    return subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "s16le", "-ar", "16000", "-ac", "1", "-i", "pipe:0",
                           *codec, "-f", fmt, "pipe:1"], input=pcm, capture_output=True, check=True).stdout


def same_speech(heard: str, text: str) -> bool:
    """Whether ``text`` carries the engine's transcript ``heard``: Vosk's results for the same audio were seen
    to differ in a word or two between calls, so most words must match."""
    words = heard.split()
    return bool(words) and sum(w in text for w in words) >= 0.6 * len(words)


class ScriptedBotAPI(FakeBotAPI):
    """A Bot API whose getUpdates can misbehave: ``script(n, offset)`` answers the n-th call (None: the
    normal answer), and ``once`` holds raw updates (any shape, even without an update_id) served one time."""

    def __init__(self, token: str, script: Any = None) -> None:
        super().__init__(token)
        self.script = script
        self.once: list[Any] = []
        self.get_updates_at: list[float] = []

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["method"] != "getUpdates" or request.match_info["token"] != self.token:
            return await super()._method(request)
        params = await self._params(request)
        offset = int(params.get("offset", 0) or 0)
        self.get_updates_at.append(time.monotonic())
        answer = self.script(len(self.get_updates_at), offset) if self.script else None
        if answer is not None:
            return answer
        deadline = time.monotonic() + min(float(params.get("timeout", 0) or 0), 1.0)
        while True:
            ready = [*self.once, *(u for u in self.updates if u["update_id"] >= offset)]
            if ready or time.monotonic() >= deadline:
                self.once.clear()
                return self._ok(ready)
            await asyncio.sleep(0.05)


def bot_api_error(code: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
