"""Telegram bot door (python-telegram-bot v22) running inside the hotline's aiohttp server.

Webhook mode (production): Telegram POSTs updates to ``telegram.webhook_path``; the request must carry the
``X-Telegram-Bot-Api-Secret-Token`` header registered with ``setWebhook``. Each update is processed by the
PTB ``Application`` before the 200 goes back, so Telegram's retry of a slow update finds it claimed.
Poll mode (development, ``hotline telegram poll``): PTB's Updater long-polls ``getUpdates``.

The dialogue itself is the channel-neutral one in hotline/channels/conversation.py with its state in Redis,
rather than PTB's in-memory ConversationHandler: a restart or a second server process keeps the
conversation. PTB handlers only turn updates into ``Incoming`` values and ``Outgoing`` values into
messages with inline buttons.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    Update,
)
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.warnings import PTBDeprecationWarning

from hotline.appkeys import INTAKE, NOTIFICATIONS, SETTINGS, STORE, STT
from hotline.bodies import read_limited
from hotline.channels.conversation import (
    BUSY,
    Conversation,
    Incoming,
    Outgoing,
    remember_question,
)
from hotline.notify import Notification
from hotline.records import Location
from hotline.secret import service_secret
from hotline.settings import Settings, SettingsError
from hotline.store.conversations import ConversationStore

log = logging.getLogger("hotline.telegram")

CHANNEL = "telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_OK = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
ALLOWED_UPDATES = ["message", "callback_query"]
MAX_MESSAGE_CHARS = 4000  # Telegram's limit is 4096


@dataclass
class TelegramConfig:
    token: str
    mode: str
    secret_token: str
    webhook_path: str
    webhook_url: str
    api_base_url: str
    file_base_url: str
    max_body_bytes: int
    max_voice_bytes: int
    max_voice_seconds: int
    request_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramConfig:
        section = settings["telegram"]
        cfg = cls(**{k: section[k] for k in cls.__dataclass_fields__})
        if cfg.mode not in ("webhook", "poll"):
            raise SettingsError("setting telegram.mode: expected 'webhook' or 'poll'")
        if not cfg.webhook_path.startswith("/"):
            raise SettingsError("setting telegram.webhook_path: must start with /")
        if cfg.secret_token and not _SECRET_OK.match(cfg.secret_token):
            raise SettingsError("setting telegram.secret_token: 1-256 characters of A-Z a-z 0-9 _ -")
        if cfg.token and not cfg.secret_token:
            # Stable across restarts and processes sharing the service secret.
            cfg.secret_token = hmac.new(service_secret(settings), b"telegram-webhook", hashlib.sha256).hexdigest()
        return cfg


def sender_of(chat_id: int) -> str:
    return f"tg:{chat_id}"


def chat_of(sender: str) -> int | None:
    if not sender.startswith("tg:"):
        return None
    try:
        return int(sender[3:])
    except ValueError:
        return None


def markup(out: Outgoing, values: list[str] | None = None) -> Any:
    if out.options:
        data = values or [v for v, _ in out.options]
        buttons = [InlineKeyboardButton(label, callback_data=d) for (_v, label), d in zip(out.options, data,
                                                                                          strict=True)]
        rows = [buttons] if len(buttons) <= 3 else [[b] for b in buttons]
        return InlineKeyboardMarkup(rows)
    if out.ask_location:
        return ReplyKeyboardMarkup([[KeyboardButton("发送我的位置", request_location=True)]],
                                   one_time_keyboard=True, resize_keyboard=True)
    return None


class TelegramDoor:
    def __init__(self, app: web.Application, cfg: TelegramConfig) -> None:
        self.app = app
        self.cfg = cfg
        store = app[STORE]
        self.conv = ConversationStore(store)
        self.engine = Conversation(app[INTAKE], store, self.conv, app[NOTIFICATIONS],
                                   app[SETTINGS]["intake"]["timezone"])
        t = cfg.request_timeout_s
        builder = (Application.builder().token(cfg.token).base_url(cfg.api_base_url)
                   .base_file_url(cfg.file_base_url).connection_pool_size(16)
                   .connect_timeout(t).read_timeout(t).write_timeout(t).pool_timeout(t))
        # Webhook mode has no Updater; polling waits up to 30 s per getUpdates on top of the request timeout.
        builder = builder.updater(None) if cfg.mode == "webhook" else builder.get_updates_read_timeout(t + 30)
        self.application = builder.build()
        self.ready = asyncio.Event()
        self._add_handlers()

    # handlers -----------------------------------------------------------------
    def _add_handlers(self) -> None:
        a = self.application
        private = filters.ChatType.PRIVATE
        a.add_handler(TypeHandler(Update, self._dedup), group=-1)
        a.add_handler(CommandHandler(["start", "help"], self._start, filters=private))
        a.add_handler(CommandHandler("status", self._status, filters=private))
        a.add_handler(CommandHandler("cancel", self._cancel, filters=private))
        a.add_handler(CallbackQueryHandler(self._button))
        a.add_handler(MessageHandler(private & ~filters.COMMAND, self._message))
        a.add_handler(MessageHandler(private & filters.COMMAND, self._start))
        a.add_error_handler(self._error)

    async def _dedup(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        # Telegram re-sends an update it got no 200 for; polling may hand one over twice after a restart.
        if not await self.conv.claim_message(CHANNEL, str(update.update_id)):
            log.info("telegram duplicate update", extra={"event": "tg_duplicate", "update_id": update.update_id})
            raise ApplicationHandlerStop

    async def _error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram handler failed", exc_info=context.error, extra={"event": "tg_failed"})
        if isinstance(update, Update):
            await self.conv.release_message(CHANNEL, str(update.update_id))
            chat = update.effective_chat
            if chat is not None:
                with contextlib.suppress(TelegramError):
                    await self.application.bot.send_message(chat.id, BUSY)

    async def _run(self, update: Update, inc: Incoming) -> None:
        chat = update.effective_chat
        assert chat is not None
        outs = await self.engine.handle(inc)
        await self.send_outs(chat.id, outs)

    def _incoming(self, update: Update, kind: str, **kw: Any) -> Incoming:
        chat = update.effective_chat
        assert chat is not None
        return Incoming(CHANNEL, sender_of(chat.id), kind, key=f"u{update.update_id}", **kw)

    async def _start(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._run(update, self._incoming(update, "start"))

    async def _status(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        arg = context.args[0] if context.args else ""
        await self._run(update, self._incoming(update, "text", text=f"查询 {arg}"))

    async def _cancel(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._run(update, self._incoming(update, "text", text="取消"))

    async def _button(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        with contextlib.suppress(TelegramError):
            await query.answer()
        chat = update.effective_chat
        if chat is None or chat.type != "private":
            return
        await self._run(update, self._incoming(update, "button", text=str(query.data or "")[:64]))
        # The buttons have done their job; a second tap on an old message would only say "expired".
        if query.message is not None:
            with contextlib.suppress(TelegramError):
                await self.application.bot.edit_message_reply_markup(chat.id, query.message.message_id,
                                                                     reply_markup=None)

    async def _message(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        m = update.message
        if m is None:
            return
        if m.text:
            inc = self._incoming(update, "text", text=m.text)
        elif m.voice:
            text = await self._transcribe(m.voice)
            ref = f"telegram:voice?file_id={quote(m.voice.file_id)}"
            inc = self._incoming(update, "voice", text=text, audio_ref=ref)
        elif m.location:
            loc = m.location
            label = m.venue.title if m.venue else ""
            inc = self._incoming(update, "location", location=Location(loc.latitude, loc.longitude, label[:200]))
        elif m.photo:
            biggest = max(m.photo, key=lambda p: p.width * p.height)
            inc = self._incoming(update, "image", attachment=f"telegram:photo?file_id={quote(biggest.file_id)}")
        else:
            inc = self._incoming(update, "unsupported")
        await self._run(update, inc)

    async def _transcribe(self, voice: Any) -> str:
        """OGG/Opus voice note → text through the speech engine; '' asks the citizen to type."""
        stt = self.app.get(STT)
        if stt is None:
            return ""
        with warnings.catch_warnings():
            # PTB 22.2+ warns that duration becomes a timedelta; accept either.
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            duration = voice.duration
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration or 0)
        if (voice.file_size or 0) > self.cfg.max_voice_bytes or seconds > self.cfg.max_voice_seconds:
            return ""
        try:
            file = await self.application.bot.get_file(voice.file_id)
            # PTB reads a local path from disk as is; only a download from the Bot API's file server is taken.
            if not str(file.file_path or "").startswith(self.application.bot.base_file_url + "/"):
                return ""
            if (file.file_size or 0) > self.cfg.max_voice_bytes:
                return ""
            data = bytes(await file.download_as_bytearray())
            if len(data) > self.cfg.max_voice_bytes:
                return ""
            return (await stt.transcribe_audio(data)).text.strip()
        except TelegramError:
            log.warning("telegram voice download failed", extra={"event": "tg_voice_failed"})
        except Exception:
            log.exception("speech recognition failed", extra={"event": "stt_failed", "channel": CHANNEL})
        return ""

    # sending ----------------------------------------------------------------------
    async def send_outs(self, chat_id: int, outs: list[Outgoing]) -> None:
        for out in outs:
            if out.text:
                await self.application.bot.send_message(chat_id, out.text[:MAX_MESSAGE_CHARS],
                                                        reply_markup=markup(out))

    async def send(self, n: Notification) -> bool:
        """Notifier for the telegram channel: options become inline buttons carrying the question's token."""
        chat_id = chat_of(n.recipient)
        if chat_id is None or not self.ready.is_set():
            return False
        q = await remember_question(self.conv, n)
        out = Outgoing(n.text, options=q.options if q else [])
        values = [f"n:{q.token}:{i}" for i in range(len(q.options))] if q else None
        try:
            await self.application.bot.send_message(chat_id, out.text[:MAX_MESSAGE_CHARS],
                                                    reply_markup=markup(out, values))
        except TelegramError as exc:
            # Blocked bot, deleted chat, Telegram away: the callback feature falls back to a phone call.
            log.warning("telegram send failed", extra={"event": "tg_send_failed", "error": type(exc).__name__})
            if q is not None:
                await self.conv.drop_question(q)
            return False
        return True

    # webhook ------------------------------------------------------------------------
    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.cfg.secret_token.encode()):
            return web.json_response({"error": {"code": "forbidden", "message": "bad secret token"}}, status=403)
        buf = await read_limited(request, self.cfg.max_body_bytes)
        try:
            data = json.loads(buf)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int) \
                or isinstance(data.get("update_id"), bool):
            return web.json_response({"error": {"code": "bad_update", "message": "not a Telegram update"}},
                                     status=400)
        try:
            update = Update.de_json(data, self.application.bot)
        except Exception:
            # Signed by Telegram but not readable by this PTB version (a newer Bot API shape). A 4xx would
            # make Telegram re-send it and hold back every later update, so it is acknowledged and skipped.
            log.warning("telegram update not understood", extra={"event": "tg_unreadable",
                                                                  "update_id": data["update_id"]})
            return web.json_response({"ok": True, "ignored": True})
        if not self.ready.is_set():
            return web.json_response({"error": {"code": "unavailable", "message": "bot starting"}}, status=503,
                                     headers={"Retry-After": "5"})
        await self.application.process_update(update)
        return web.json_response({"ok": True})

    # life cycle -----------------------------------------------------------------------
    async def _initialize(self) -> None:
        """getMe and (optionally) setWebhook / start polling, retried while Telegram is out of reach."""
        delay = 1.0
        while True:
            try:
                await self.application.initialize()
                await self.application.start()
                if self.cfg.mode == "webhook" and self.cfg.webhook_url:
                    await self.application.bot.set_webhook(self.cfg.webhook_url, secret_token=self.cfg.secret_token,
                                                           allowed_updates=ALLOWED_UPDATES)
                if self.cfg.mode == "poll":
                    updater = self.application.updater
                    assert updater is not None
                    await updater.start_polling(allowed_updates=ALLOWED_UPDATES, poll_interval=0.0, timeout=30)
                self.ready.set()
                me = self.application.bot.username
                log.info("telegram channel on", extra={"event": "channel_on", "channel": CHANNEL,
                                                       "mode": self.cfg.mode, "bot": me})
                return
            except TelegramError as exc:
                log.warning("telegram not reachable, retrying", extra={"event": "tg_init_failed",
                                                                       "error": type(exc).__name__,
                                                                       "retry_s": delay})
                with contextlib.suppress(TelegramError, RuntimeError):
                    await self._stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _stop(self) -> None:
        updater = self.application.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.application.running:
            await self.application.stop()
        await self.application.shutdown()


TELEGRAM_DOOR = web.AppKey("telegram_door", TelegramDoor)


def setup(app: web.Application) -> None:
    cfg = TelegramConfig.from_settings(app[SETTINGS])
    if not cfg.token:
        log.info("telegram channel off: telegram.token is empty", extra={"event": "channel_off",
                                                                          "channel": CHANNEL})
        return
    # httpx logs every request URL at INFO, and Bot API URLs contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        door = TelegramDoor(app, cfg)
        app[TELEGRAM_DOOR] = door
        app[NOTIFICATIONS].register(CHANNEL, door)
        init = asyncio.create_task(door._initialize(), name="telegram-init")
        # Usually ready at once; if Telegram is away the server still starts and the task keeps trying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(init), timeout=cfg.request_timeout_s)
        try:
            yield
        finally:
            init.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await init
            if door.ready.is_set():
                with contextlib.suppress(TelegramError, RuntimeError):
                    await door._stop()

    async def webhook(request: web.Request) -> web.Response:
        return await request.app[TELEGRAM_DOOR].webhook(request)

    app.cleanup_ctx.append(ctx)
    if cfg.mode == "webhook":
        app.router.add_post(cfg.webhook_path, webhook)
