"""WeChat Official Account door (公众号 server configuration): verification, pushes, passive and late replies.

- ``GET  <path>``  server URL verification: signature over (token, timestamp, nonce) → echo ``echostr``.
- ``POST <path>``  message pushes as XML, plaintext or safe mode (``encrypt_type=aes`` + ``msg_signature``).
  Signatures, AES and the message classes come from wechatpy; every byte of XML we receive is first parsed
  by defusedxml, which refuses DTDs and entities (XXE, billion laughs) before anything else reads it.

WeChat drops a push after 5 s and sends it again (3 tries). Each push is claimed in Redis by its MsgId
(events: sender + CreateTime + event), so a retry never starts the work twice: it gets the reply the first
try produced, or ``success``. When the work (speech recognition, a slow store) takes longer than
``reply_deadline_s`` the push is answered ``success`` and the answer follows as a customer-service message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element

import aiohttp
from aiohttp import web
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from hotline.appkeys import ATTACHMENTS, INTAKE, NOTIFICATIONS, SETTINGS, STORE, STT
from hotline.attachments import AttachmentError
from hotline.bodies import read_limited
from hotline.channels.conversation import (
    Conversation,
    Incoming,
    Outgoing,
    number_options,
    remember_question,
)
from hotline.channels.wechat_api import WINDOW_ERRORS, WeChatAPI, WeChatAPIError
from hotline.notify import Notification
from hotline.numbers import ascii_digits
from hotline.records import Location
from hotline.settings import SettingsError
from hotline.status import LABELS_ZH
from hotline.store.conversations import ConversationStore

log = logging.getLogger("hotline.wechat")

CHANNEL = "wechat"
MAX_REPLY_BYTES = 2000  # WeChat cuts text replies at 2048 bytes
_OPENID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
BUSY_REPLY = "系统繁忙，请稍后再发送一次。"
# Unix seconds have 10 digits until the year 2286; WeChat's MsgId is a 64-bit number (at most 20 digits). Longer
# digit strings are refused before int() sees them: past 4300 digits int() raises, and far smaller ones already
# overflow a float in the clock-skew arithmetic.
MAX_TIMESTAMP_DIGITS = 12
MAX_ID_DIGITS = 20
# Characters XML 1.0 cannot carry at all, not even in CDATA (controls, lone surrogates, U+FFFE/U+FFFF): a reply
# holding one would not parse on WeChat's side.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# The citizen actions after which WeChat accepts customer-service messages (its 客服消息 rules: a message, a
# follow, a QR-code scan, a menu button of type click / scancode_push / scancode_waitmsg; payments are not taken
# here). Every other event opens nothing: reports the platform sends on its own (TEMPLATESENDJOBFINISH after our
# own template message, MASSSENDJOBFINISH, PUBLISHJOBFINISH…), VIEW (a menu link) and LOCATION (the position
# reported when the citizen opens the chat). Touching the window for those would reset its quota, or open one
# WeChat refuses, each time we sent a template message. WeChat gives follows, scans and clicks only 3 messages
# within a minute; the window record has one shape, and WeChat's refusal (45015/45047) then sends a notice the
# template way.
WINDOW_EVENTS = frozenset({"subscribe", "scan", "click", "scancode_push", "scancode_waitmsg"})


class BadPush(Exception):
    """A push we refuse: ``status`` 400 (malformed) or 403 (signature)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# What a template message's fields may say; titles by notification kind.
TEMPLATE_VALUES = ("title", "case_id", "status", "time", "text")
_TEMPLATE_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
TEMPLATE_TITLES = {
    "received": "您反映的问题已受理", "dispatched": "您反映的问题已派单办理", "resolved": "您反映的问题已办结",
    "reopened": "您反映的问题已重新办理", "survey": "请您评价办理结果", "answer": "您的咨询已答复",
    "extension": "您反映的问题办理时限已延长",
}
TEMPLATE_TEXT_CHARS = 100


def clip(text: str, limit: int = MAX_REPLY_BYTES) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "…"


def render_outgoing(outs: list[Outgoing]) -> str:
    """WeChat has no buttons: options become numbered lines; several messages become one reply."""
    return clip("\n\n".join(number_options(o.text, o.options) for o in outs if o.text))


def parse_xml(body: bytes) -> Element:
    """Parse untrusted XML; DTDs, entities and external references are refused (400)."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (DefusedXmlException, SafeET.ParseError, ValueError) as exc:
        raise BadPush(400, "malformed or forbidden XML") from exc
    if root.tag != "xml":
        raise BadPush(400, "root element must be <xml>")
    return root


def fields(root: Element) -> dict[str, str]:
    return {child.tag: (child.text or "").strip() for child in root if isinstance(child.tag, str)}


def cdata(value: str) -> str:
    """``value`` as CDATA that holds exactly this text: a "]]>" in citizen text would otherwise end the section
    and let the rest be read as XML of its own (another MsgType, a broken reply)."""
    return "<![CDATA[" + _NOT_XML_CHAR.sub("", value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply_xml(to_user: str, from_user: str, text: str) -> str:
    """A passive text reply. Not wechatpy's TextReply: its fields put values into CDATA unescaped."""
    return (f"<xml><ToUserName>{cdata(to_user)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{cdata(text)}</Content></xml>")


@dataclass
class WeChatConfig:
    token: str
    app_id: str
    app_secret: str
    aes_key: str
    path: str
    api_base_url: str
    reply_deadline_s: float
    max_body_bytes: int
    max_clock_skew_s: int
    window_s: int
    window_quota: int
    api_timeout_s: float
    template_id: str
    template_fields: list[str]

    @classmethod
    def from_settings(cls, section: dict[str, Any]) -> WeChatConfig:
        cfg = cls(**{k: section[k] for k in cls.__dataclass_fields__})
        for entry in cfg.template_fields:
            name, sep, text = str(entry).partition("=")
            try:
                text.format(**dict.fromkeys(TEMPLATE_VALUES, ""))
            except (KeyError, IndexError, ValueError) as exc:
                raise SettingsError(f"setting wechat.template_fields: {entry!r}: unknown or broken placeholder "
                                    f"{exc}; use {', '.join('{' + v + '}' for v in TEMPLATE_VALUES)}") from exc
            if not sep or not _TEMPLATE_FIELD.fullmatch(name):
                raise SettingsError(f"setting wechat.template_fields: {entry!r} is not <field>=<text>")
        if not cfg.path.startswith("/"):
            raise SettingsError("setting wechat.path: must start with /")
        if cfg.aes_key and (len(cfg.aes_key) != 43 or not cfg.app_id):
            raise SettingsError("setting wechat.aes_key: EncodingAESKey has 43 characters and needs wechat.app_id")
        return cfg


@dataclass
class PushContext:
    """What a reply to one push needs: the message, the query's nonce/timestamp, safe mode or not; and what the
    push is, from its own fields (wechatpy makes an event it does not know an "unknown" message)."""

    message: Any
    encrypted: bool
    nonce: str
    timestamp: str
    is_event: bool = False
    event: str = ""  # the Event field, lower case; "" for messages


@dataclass
class _Work:
    late: bool = False  # the push was already answered "success"; the result goes out as a CS message
    done: asyncio.Event = field(default_factory=asyncio.Event)


class WeChatDoor:
    def __init__(self, app: web.Application, cfg: WeChatConfig, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.cfg = cfg
        store = app[STORE]
        self.conv = ConversationStore(store)
        self.engine = Conversation(app[INTAKE], store, self.conv, app[NOTIFICATIONS],
                                   app[SETTINGS]["intake"]["timezone"])
        self.api = WeChatAPI(session, self.conv, base_url=cfg.api_base_url, app_id=cfg.app_id,
                             app_secret=cfg.app_secret, timeout_s=cfg.api_timeout_s)
        self.crypto = WeChatCrypto(cfg.token, cfg.aes_key, cfg.app_id) if cfg.aes_key else None
        self.tasks: set[asyncio.Task[Any]] = set()

    # signatures ---------------------------------------------------------------
    def _check_time(self, timestamp: str) -> None:
        if not ascii_digits(timestamp) or len(timestamp) > MAX_TIMESTAMP_DIGITS:
            raise BadPush(403, "bad timestamp")
        skew = self.cfg.max_clock_skew_s
        if skew and abs(time.time() - int(timestamp)) > skew:
            # A signed push captured long ago must not be replayed.
            raise BadPush(403, "timestamp outside the allowed clock skew")

    def _check_plain(self, q: Any) -> None:
        signature, timestamp, nonce = q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")
        if not (signature and timestamp and nonce):
            raise BadPush(403, "missing signature")
        try:
            check_signature(self.cfg.token, signature, timestamp, nonce)
        except InvalidSignatureException as exc:
            raise BadPush(403, "bad signature") from exc
        self._check_time(timestamp)

    # handlers -------------------------------------------------------------------
    async def verify(self, request: web.Request) -> web.Response:
        try:
            self._check_plain(request.query)
        except BadPush as exc:
            return web.Response(status=exc.status, text=exc.message)
        return web.Response(text=request.query.get("echostr", ""), content_type="text/plain")

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_limited(request, self.cfg.max_body_bytes)

    def _open(self, request: web.Request, body: bytes) -> PushContext:
        """Check the signature, decrypt in safe mode, and parse the push into a wechatpy message."""
        q = request.query
        encrypted = q.get("encrypt_type", "raw").lower() == "aes"
        timestamp, nonce = q.get("timestamp", ""), q.get("nonce", "")
        if encrypted:
            if self.crypto is None:
                raise BadPush(400, "safe mode push but wechat.aes_key is not set")
            msg_signature = q.get("msg_signature", "")
            if not (msg_signature and timestamp and nonce):
                raise BadPush(403, "missing msg_signature")
            outer = fields(parse_xml(body))
            encrypt = outer.get("Encrypt", "")
            if not encrypt:
                raise BadPush(400, "no Encrypt element")
            try:
                # A dict, not the body: wechatpy would otherwise parse the XML again with xmltodict.
                plain = self.crypto.decrypt_message({"Encrypt": encrypt}, msg_signature, timestamp, nonce)
            except InvalidSignatureException as exc:
                raise BadPush(403, "bad msg_signature") from exc
            except Exception as exc:
                # Wrong key, bad padding, wrong app id: nothing we can read.
                raise BadPush(400, "cannot decrypt") from exc
            self._check_time(timestamp)
            xml_bytes = plain.encode("utf-8") if isinstance(plain, str) else bytes(plain)
        else:
            self._check_plain(q)
            xml_bytes = body
        root = parse_xml(xml_bytes)
        values = fields(root)
        if not values.get("MsgType") or not _OPENID.match(values.get("FromUserName", "")):
            raise BadPush(400, "MsgType and FromUserName are required")
        numbers = [values.get("CreateTime", "")] + ([values["MsgId"]] if "MsgId" in values else [])
        if not all(ascii_digits(n) and len(n) <= MAX_ID_DIGITS for n in numbers):
            raise BadPush(400, "CreateTime and MsgId must be numbers")
        try:
            message = parse_message(xml_bytes.decode("utf-8"))
        except Exception as exc:
            raise BadPush(400, "unreadable message") from exc
        is_event = values["MsgType"].lower() == "event"
        return PushContext(message, encrypted, nonce, timestamp, is_event,
                           values.get("Event", "").lower() if is_event else "")

    def _reply(self, ctx: PushContext, text: str) -> web.Response:
        """Every passive reply goes out through here."""
        if not text:
            return web.Response(text="success", content_type="text/plain")
        xml = text_reply_xml(str(ctx.message.source), str(ctx.message.target or ""), text)
        if ctx.encrypted and self.crypto is not None:
            xml = self.crypto.encrypt_message(xml, ctx.nonce, str(int(time.time())))
        return web.Response(text=xml, content_type="application/xml")

    async def push(self, request: web.Request) -> web.Response:
        body = await self._read_body(request)
        try:
            ctx = self._open(request, body)
        except BadPush as exc:
            log.warning("wechat push refused", extra={"event": "wechat_refused", "status": exc.status,
                                                       "reason": exc.message})
            return web.Response(status=exc.status, text=exc.message)
        key = dedup_key(ctx)
        if not await self.conv.claim_message(CHANNEL, key):
            return await self._duplicate(ctx, key)
        work = _Work()
        task = asyncio.create_task(self._work(ctx, key, work), name=f"wechat-{key}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        done, _ = await asyncio.wait({task}, timeout=self.cfg.reply_deadline_s)
        if task not in done:
            # Answer now so WeChat does not retry; the result follows as a customer-service message.
            work.late = True
            log.info("wechat reply late", extra={"event": "wechat_late", "key": key})
            return self._reply(ctx, "")
        try:
            text = task.result()
        except Exception:
            return self._reply(ctx, BUSY_REPLY)
        await self.conv.finish_message(CHANNEL, key, {"via": "passive", "text": text})
        return self._reply(ctx, text)

    async def _duplicate(self, ctx: PushContext, key: str) -> web.Response:
        """A retry (or replay) of a push already taken: the same answer, never the same work twice."""
        deadline = time.monotonic() + self.cfg.reply_deadline_s
        while True:
            answer = await self.conv.message_answer(CHANNEL, key)
            if answer is not None:
                return self._reply(ctx, answer.get("text", "") if answer.get("via") == "passive" else "")
            if time.monotonic() >= deadline:
                return self._reply(ctx, "")
            await asyncio.sleep(0.1)

    async def _work(self, ctx: PushContext, key: str, work: _Work) -> str:
        openid = ctx.message.source
        try:
            outs = await self.respond(ctx)
            text = render_outgoing(outs)
        except Exception:
            log.exception("wechat message failed", extra={"event": "wechat_failed", "key": key})
            # Let WeChat's next try (or the citizen's resend) do the work again.
            await self.conv.release_message(CHANNEL, key)
            if work.late:
                # Nobody waits for this task's result any more: tell the citizen directly.
                await self.send_cs(openid, BUSY_REPLY)
                return ""
            raise
        if work.late:
            sent = await self.send_cs(openid, text) if text else True
            await self.conv.finish_message(CHANNEL, key, {"via": "cs", "text": text, "sent": sent})
        return text

    async def send_cs(self, openid: str, text: str) -> bool:
        """A customer-service message inside the 48-hour window; False when WeChat would refuse it."""
        if not self.api.configured:
            log.warning("wechat app_id/app_secret not set", extra={"event": "wechat_no_api"})
            return False
        if not await self.conv.use_window(CHANNEL, openid, self.cfg.window_quota):
            return False
        try:
            await self.api.send_text(openid, clip(text))
        except WeChatAPIError as exc:
            log.warning("wechat send failed", extra={"event": "wechat_send_failed", "errcode": exc.errcode,
                                                      "window": exc.errcode in WINDOW_ERRORS})
            return False
        except (aiohttp.ClientError, TimeoutError):
            log.warning("wechat api unreachable", extra={"event": "wechat_api_unreachable"})
            return False
        return True

    # message → conversation -------------------------------------------------------
    async def respond(self, ctx: PushContext) -> list[Outgoing]:
        msg = ctx.message
        openid = msg.source
        kind = msg.type
        if ctx.is_event:
            event = ctx.event
            if event == "unsubscribe":
                await self.conv.forget(CHANNEL, openid)
                return []
            if event in WINDOW_EVENTS:
                await self.conv.touch_window(CHANNEL, openid, self.cfg.window_s)
            if event == "subscribe":
                return await self.engine.handle(Incoming(CHANNEL, openid, "start"))
            # Menu clicks, scans, LOCATION reports and the platform's own reports need no answer.
            return []
        await self.conv.touch_window(CHANNEL, openid, self.cfg.window_s)
        key = str(msg.id)
        if kind == "text":
            inc = Incoming(CHANNEL, openid, "text", text=str(msg.content or ""), key=key)
        elif kind == "voice":
            inc = await self._voice(msg, key)
        elif kind == "location":
            inc = self._location(msg, key)
        elif kind == "image":
            inc = Incoming(CHANNEL, openid, "image", attachment=await self._image(msg), key=key)
        else:
            inc = Incoming(CHANNEL, openid, "unsupported", key=key)
        return await self.engine.handle(inc)

    def _location(self, msg: Any, key: str) -> Incoming:
        try:
            lat, lon = float(msg.location_x), float(msg.location_y)
        except (TypeError, ValueError):
            return Incoming(CHANNEL, msg.source, "unsupported", key=key)
        if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
            return Incoming(CHANNEL, msg.source, "unsupported", key=key)
        loc = Location(lat, lon, str(msg.label or "")[:200])
        return Incoming(CHANNEL, msg.source, "location", location=loc, key=key)

    async def _image(self, msg: Any) -> str:
        """The picture fetched by its media id into our own store (WeChat keeps it 3 days); WeChat's own
        reference when that fails, so the case is filed either way."""
        media_id = str(msg.media_id or "")
        fallback = f"wechat:image?media_id={quote(media_id)}&pic_url={quote(str(msg.image or ''))}"
        files = self.app.get(ATTACHMENTS)
        if files is None or not media_id or not self.api.configured:
            return fallback
        try:
            return await asyncio.to_thread(files.save, await self.api.get_media(media_id))
        except (WeChatAPIError, aiohttp.ClientError, TimeoutError, AttachmentError, OSError):
            log.warning("wechat image not fetched", extra={"event": "wechat_image_failed"})
        return fallback

    async def _voice(self, msg: Any, key: str) -> Incoming:
        media_id = str(msg.media_id or "")
        ref = f"wechat:voice?media_id={quote(media_id)}"
        recognition = str(msg.recognition or "").strip()
        if recognition:
            return Incoming(CHANNEL, msg.source, "voice", text=recognition, audio_ref=ref, key=key)
        stt = self.app.get(STT)
        text = ""
        if stt is not None and media_id and self.api.configured:
            try:
                audio = await self.api.get_media(media_id)
                text = (await stt.transcribe_audio(audio)).text.strip()
            except (WeChatAPIError, aiohttp.ClientError, TimeoutError):
                log.warning("wechat voice download failed", extra={"event": "wechat_voice_failed"})
            except Exception:
                log.exception("speech recognition failed", extra={"event": "stt_failed", "channel": CHANNEL})
        # An empty text makes the conversation ask the citizen to type.
        return Incoming(CHANNEL, msg.source, "voice", text=text, audio_ref=ref, key=key)

    # notifications ----------------------------------------------------------------
    async def send(self, n: Notification) -> bool:
        """Notifier for the wechat channel: a customer-service message inside the 48-hour window, else a
        template message when one is configured; False when neither reaches the citizen (callbacks then
        go to the follow-up agents)."""
        q = await remember_question(self.conv, n)
        ok = await self.send_cs(n.recipient, number_options(n.text, n.options))
        if not ok:
            # A reply to the template (a number for a survey question) opens the window and is matched to
            # the remembered question, so the question stays.
            ok = await self.send_template(n)
        if not ok and q is not None:
            await self.conv.drop_question(q)
        return ok

    async def send_template(self, n: Notification) -> bool:
        cfg = self.cfg
        if not cfg.template_id or not self.api.configured:
            return False
        status = ""
        try:
            status = LABELS_ZH[(await self.app[STORE].get_case(n.case_id)).status]
        except Exception:
            log.warning("wechat template without case status", extra={"event": "wechat_template_status",
                                                                       "case_id": n.case_id})
        text = number_options(n.text, n.options)
        values = {"title": TEMPLATE_TITLES.get(n.kind, "您反映的问题有新进展"), "case_id": n.case_id,
                  "status": status, "time": datetime.now(self.engine.tz).strftime("%Y-%m-%d %H:%M"),
                  "text": text if len(text) <= TEMPLATE_TEXT_CHARS else text[: TEMPLATE_TEXT_CHARS - 1] + "…"}
        data = {}
        for entry in cfg.template_fields:
            name, _, fmt = entry.partition("=")
            data[name] = fmt.format(**values)
        url = str(n.meta.get("url", ""))
        try:
            await self.api.send_template(n.recipient, cfg.template_id, data,
                                         url if url.startswith(("https://", "http://")) else "")
        except WeChatAPIError as exc:
            log.warning("wechat template failed", extra={"event": "wechat_template_failed", "errcode": exc.errcode})
            return False
        except (aiohttp.ClientError, TimeoutError):
            log.warning("wechat api unreachable", extra={"event": "wechat_api_unreachable"})
            return False
        return True

    async def close(self) -> None:
        # Late answers still being worked on get a moment to go out, then are cancelled.
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=5)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def dedup_key(ctx: PushContext) -> str:
    msg = ctx.message
    if ctx.is_event or not int(msg.id or 0):
        return f"{msg.source}:{msg.time}:{ctx.event or str(msg.type).lower()}"
    return f"msg:{msg.id}"


WECHAT_DOOR = web.AppKey("wechat_door", WeChatDoor)


def setup(app: web.Application) -> None:
    cfg = WeChatConfig.from_settings(app[SETTINGS]["wechat"])
    if not cfg.token:
        log.info("wechat channel off: wechat.token is empty", extra={"event": "channel_off", "channel": CHANNEL})
        return

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            door = WeChatDoor(app, cfg, session)
            app[WECHAT_DOOR] = door
            app[NOTIFICATIONS].register(CHANNEL, door)
            log.info("wechat channel on", extra={"event": "channel_on", "channel": CHANNEL, "path": cfg.path,
                                                 "safe_mode": bool(cfg.aes_key)})
            try:
                yield
            finally:
                await door.close()

    async def verify(request: web.Request) -> web.Response:
        return await request.app[WECHAT_DOOR].verify(request)

    async def push(request: web.Request) -> web.Response:
        return await request.app[WECHAT_DOOR].push(request)

    app.cleanup_ctx.append(ctx)
    app.router.add_get(cfg.path, verify)
    app.router.add_post(cfg.path, push)
