"""Telegram bot door (python-telegram-bot v22) running inside the hotline's aiohttp server.

Webhook mode (production): Telegram POSTs updates to ``telegram.webhook_path``; the request must carry the
``X-Telegram-Bot-Api-Secret-Token`` header registered with ``setWebhook``. Each update is processed, and its
effects written to Redis, before the 200 goes back, so Telegram's retry of a slow update finds it claimed.
Poll mode (development, ``hotline telegram poll``): PTB's Updater long-polls ``getUpdates`` through
``PollingBot``, which keeps one unreadable update, a wild 429 or a stray 401 from stopping or spinning it.

Intake is a PTB ``ConversationHandler`` (name ``intake``): describe the problem (text or voice note) →
the place (address or location share) → confirm with inline buttons → case number; ``/cancel`` at any
step; a conversation left alone for ``telegram.conversation_timeout_s`` is ended and the citizen told.
Its states and the draft (``chat_data``) go through ``TelegramStatePersistence`` (hotline/store/
telegram_state.py) and are written to Redis after every update, so a restart resumes the conversation.
The wording and the decisions of each step are the helpers of hotline/channels/conversation.py, which the
WeChat door uses too. ``/status``, ``查询 <案件号>`` and answers to notification buttons (surveys) are
handled before the conversation, at any step, without changing it.

Updates for the bot must reach one process: PTB holds conversation states in memory and reads them from
Redis only at start-up (README: Telegram bot, "Several processes").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    Update,
)
from telegram.error import InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    ExtBot,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning, PTBUserWarning

from hotline.appkeys import ATTACHMENTS, INTAKE, NOTIFICATIONS, SETTINGS, STORE, STT
from hotline.attachments import AttachmentError
from hotline.bodies import parse_json, read_limited
from hotline.channels.conversation import (
    ASK_PLACE,
    ASK_TEXT,
    BUSY,
    CANCELLED,
    CONFIRM_AGAIN,
    CONFIRM_NO,
    CONFIRM_YES,
    EXPIRED,
    IMAGE_WITH_CASE,
    IMAGES_FULL,
    MAX_TEXT_CHARS,
    TIMED_OUT,
    UNSUPPORTED,
    VOICE_UNREADABLE,
    WELCOME,
    Conversation,
    Incoming,
    Outgoing,
    add_image,
    case_number_text,
    confirm_prompt,
    intake_message,
    is_cancel,
    is_help,
    is_no,
    is_yes,
    location_received,
    number_options,
    place_known,
    remember_question,
    status_query,
    take_location,
    take_place,
)
from hotline.intake import IntakeError
from hotline.notify import Notification
from hotline.numbers import ascii_digits
from hotline.records import InboundMessage, Location
from hotline.secret import service_secret
from hotline.settings import Settings, SettingsError
from hotline.store.conversations import ConversationStore, Dialogue
from hotline.store.telegram_state import TelegramStatePersistence

log = logging.getLogger("hotline.telegram")

CHANNEL = "telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_OK = re.compile(r"^[A-Za-z0-9_\-]{1,256}$")
ALLOWED_UPDATES = ["message", "callback_query"]
MAX_MESSAGE_CHARS = 4000  # Telegram's limit is 4096

# The intake conversation: its persistence name and states (strings, so Redis holds readable JSON).
CONVERSATION_NAME = "intake"
DESCRIBE = "describe"  # a location or photo came first; waiting for the problem itself
PLACE = "place"  # waiting for an address or a location share
CONFIRM = "confirm"  # waiting for 确认提交 / 取消
END = ConversationHandler.END
DRAFT = "draft"  # chat_data key of the draft (a Dialogue as a dict)

# New private messages only: edited messages, groups and channels are not part of a citizen's dialogue.
PRIVATE = filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE
TEXT = PRIVATE & filters.TEXT & ~filters.COMMAND
CONFIRM_DATA = f"^({re.escape(CONFIRM_YES)}|{re.escape(CONFIRM_NO)})$"

Context = ContextTypes.DEFAULT_TYPE

# Polling (``hotline telegram poll``): bounds on what one getUpdates answer can make the loop do.
POLL_INTERVAL_S = 0.1  # > 0: an answer that keeps coming back empty cannot spin the loop
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 300.0
TOKEN_RETRY_MIN_S = 5.0
TOKEN_RETRY_MAX_S = 60.0
Step = Callable[[Update, Context], Awaitable[object]]


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
    conversation_timeout_s: float

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
        if cfg.conversation_timeout_s < 0:
            raise SettingsError("setting telegram.conversation_timeout_s: must be 0 (none) or more")
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


class HotlineApplication(Application):  # type: ignore[type-arg]
    """PTB's Application with two guarantees the hotline needs from ``process_update``.

    - One chat's updates run one after the other (webhook requests arrive concurrently): two taps racing
      on 确认提交 see the conversation in turn, not both in the confirm step.
    - When it returns, the update's conversation state and draft are in Redis: the webhook's 200 (or the
      next getUpdates offset) is given only for an update a restart would not lose. PTB itself writes the
      persistence every ``update_interval`` seconds.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._chat_locks: dict[int, tuple[asyncio.Lock, int]] = {}

    async def process_update(self, update: object) -> None:
        chat = update.effective_chat if isinstance(update, Update) else None
        if chat is None:
            await super().process_update(update)
            await self.update_persistence()
            return
        lock, users = self._chat_locks.get(chat.id, (asyncio.Lock(), 0))
        self._chat_locks[chat.id] = (lock, users + 1)
        try:
            async with lock:
                await super().process_update(update)
                # Before the write: a dropped entry is then deleted by this very run (a later run would
                # skip an update of this chat marked in between).
                self._forget_idle(update)
                await self.update_persistence()
        finally:
            lock, users = self._chat_locks[chat.id]
            if users <= 1:
                del self._chat_locks[chat.id]
            else:
                self._chat_locks[chat.id] = (lock, users - 1)

    def _forget_idle(self, update: Update) -> None:
        # PTB keeps a dict per chat and user ever seen; an empty one (no conversation) is already gone
        # from Redis, so memory need not hold it either.
        chat, user = update.effective_chat, update.effective_user
        if chat is not None and chat.id in self.chat_data and not self.chat_data[chat.id]:
            self.drop_chat_data(chat.id)
        if user is not None and user.id in self.user_data and not self.user_data[user.id]:
            self.drop_user_data(user.id)


def _update_id(raw: object) -> int | None:
    uid = raw.get("update_id") if isinstance(raw, dict) else None
    return uid if isinstance(uid, int) and not isinstance(uid, bool) else None


@dataclass
class _PollState:
    skip_to: int = 0  # the offset that acknowledges the unreadable updates skipped so far
    token_retry_s: float = TOKEN_RETRY_MIN_S
    stopping: bool = False


class PollingBot(ExtBot):  # type: ignore[type-arg]
    """The bot of poll mode, hardened against getUpdates answers that stop PTB's polling loop.

    - An update this PTB cannot read (a newer Bot API shape, a broken one) is skipped and acknowledged by
      the next offset, logging only its update_id: PTB parses the batch as a whole, so one such update made
      it re-fetch the same batch forever, never process the readable ones, and log the raw batch (the
      citizens' names and messages) at CRITICAL each time.
    - A 429's retry_after is bounded (a negative one spun the loop, a huge one parked polling for days), and
      the wait happens here, where PTB's stop event interrupts it: its retry loop sleeps uninterruptibly.
    - A refused token (401/404) is waited out with backoff: PTB's loop ends for good on InvalidToken while
      the service keeps looking ready, so one bad answer from Telegram would silence the bot.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # PTB freezes its objects after __init__; the polling state lives in one mutable holder.
        with self._unfrozen():
            self.poll = _PollState(token_retry_s=TOKEN_RETRY_MIN_S)

    async def get_updates(self, offset: int | None = None, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        if self.poll.skip_to and (offset is None or 0 <= offset < self.poll.skip_to):
            offset = self.poll.skip_to
        try:
            updates = await super().get_updates(offset, *args, **kwargs)
        except RetryAfter as exc:
            wait = min(max(exc._retry_after.total_seconds(), RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)
            log.warning("telegram getUpdates rate-limited", extra={"event": "tg_poll_retry_after",
                                                                   "retry_s": wait})
            if self.poll.stopping:
                raise RetryAfter(int(wait)) from None
            await asyncio.sleep(wait)
            return ()
        except InvalidToken:
            # The exception carries Telegram's description only, never the token.
            wait = self.poll.token_retry_s
            log.error("telegram getUpdates refused the bot token, polling again later",
                      extra={"event": "tg_poll_invalid_token", "retry_s": wait})
            if self.poll.stopping:
                raise
            self.poll.token_retry_s = min(wait * 2, TOKEN_RETRY_MAX_S)
            await asyncio.sleep(wait)
            return ()
        self.poll.token_retry_s = TOKEN_RETRY_MIN_S
        return updates

    async def _post(self, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        result = await super()._post(endpoint, *args, **kwargs)
        if endpoint != "getUpdates":
            return result
        if not isinstance(result, list):
            # A TelegramError makes PTB's loop back off; anything else it would log with the data.
            raise NetworkError("getUpdates answer is not a list of updates")
        readable, skipped = [], []
        for raw in result:
            uid = _update_id(raw)
            try:
                ok = uid is not None and Update.de_json(raw, self) is not None
            except Exception:
                ok = False
            if ok:
                readable.append(raw)
            else:
                skipped.append(uid)
                # Only the id: the update holds the citizen's name and message.
                log.warning("telegram update not understood, skipped", extra={"event": "tg_unreadable",
                                                                              "update_id": uid})
        known = [u for u in skipped if u is not None]
        if known:
            self.poll.skip_to = max(self.poll.skip_to, max(known) + 1)
        if result and not readable and not known:
            # Nothing in the batch gives an offset to move past it: without backoff it would come back at once.
            raise NetworkError("getUpdates answer has no usable update_id")
        return readable


class TelegramDoor:
    def __init__(self, app: web.Application, cfg: TelegramConfig) -> None:
        self.app = app
        self.cfg = cfg
        store = app[STORE]
        self.intake = app[INTAKE]
        self.conv = ConversationStore(store)
        # The shared engine answers status requests and notification buttons exactly as on WeChat.
        self.engine = Conversation(app[INTAKE], store, self.conv, app[NOTIFICATIONS],
                                   app[SETTINGS]["intake"]["timezone"])
        self.state = TelegramStatePersistence(store, max_age_s=cfg.conversation_timeout_s)
        t = cfg.request_timeout_s
        builder = Application.builder().application_class(HotlineApplication).persistence(self.state)
        if cfg.mode == "webhook":
            builder = (builder.token(cfg.token).base_url(cfg.api_base_url).base_file_url(cfg.file_base_url)
                       .connection_pool_size(16).connect_timeout(t).read_timeout(t).write_timeout(t)
                       .pool_timeout(t).updater(None))
        else:
            # Polling waits up to 30 s per getUpdates on top of the request timeout.
            builder = builder.bot(PollingBot(
                cfg.token, base_url=cfg.api_base_url, base_file_url=cfg.file_base_url,
                request=HTTPXRequest(connection_pool_size=16, connect_timeout=t, read_timeout=t,
                                     write_timeout=t, pool_timeout=t),
                get_updates_request=HTTPXRequest(connection_pool_size=1, connect_timeout=t, read_timeout=t + 30,
                                                 write_timeout=t, pool_timeout=t)))
        self.application = builder.build()
        # File downloads bypass PTB, whose download reads the whole body with a timeout per read only.
        self.download_deadline_s = cfg.request_timeout_s
        self._http: aiohttp.ClientSession | None = None
        self.ready = asyncio.Event()
        self.intake_handler = self._conversation()
        self._add_handlers()

    # handlers -----------------------------------------------------------------
    def _conversation(self) -> ConversationHandler:  # type: ignore[type-arg]
        on_text, on_voice = TEXT, PRIVATE & filters.VOICE
        on_location, on_photo = PRIVATE & filters.LOCATION, PRIVATE & filters.PHOTO
        step = self._step
        with warnings.catch_warnings():
            # PTB warns that CallbackQueryHandlers are tracked per chat, not per message, with
            # per_message=False. Per chat is what is meant: the buttons answer the chat's current step,
            # and a press on an older message's buttons is refused as expired.
            warnings.filterwarnings("ignore", message=".*per_message.*", category=PTBUserWarning)
            return ConversationHandler(
                entry_points=[
                    MessageHandler(on_text, self._begin_text),
                    MessageHandler(on_voice, self._begin_voice),
                    MessageHandler(on_location, self._begin_location),
                    MessageHandler(on_photo, self._begin_photo),
                ],
                states={
                    DESCRIBE: [
                        MessageHandler(on_text, step(self._describe_text)),
                        MessageHandler(on_voice, step(self._describe_voice)),
                        MessageHandler(on_location, step(self._describe_location)),
                        MessageHandler(on_photo, step(self._add_photo)),
                    ],
                    PLACE: [
                        MessageHandler(on_text, step(self._place_text)),
                        MessageHandler(on_voice, step(self._place_voice)),
                        MessageHandler(on_location, step(self._place_location)),
                        MessageHandler(on_photo, step(self._add_photo)),
                    ],
                    CONFIRM: [
                        CallbackQueryHandler(step(self._confirm_button), pattern=CONFIRM_DATA),
                        MessageHandler(on_text, step(self._confirm_text)),
                        MessageHandler(on_location, step(self._confirm_location)),
                        MessageHandler(on_photo, step(self._add_photo)),
                    ],
                    ConversationHandler.TIMEOUT: [TypeHandler(Update, self._timed_out)],
                },
                fallbacks=[
                    CommandHandler("cancel", self._cancel, filters=PRIVATE),
                    CommandHandler(["start", "help"], self._help_in_conversation, filters=PRIVATE),
                    CallbackQueryHandler(self._stale_button, pattern=CONFIRM_DATA),
                    MessageHandler(PRIVATE & filters.COMMAND, self._help_in_conversation),
                    MessageHandler(PRIVATE, self._unsupported_in_conversation),
                ],
                name=CONVERSATION_NAME,
                persistent=True,
                conversation_timeout=self.cfg.conversation_timeout_s or None,
            )

    def _add_handlers(self) -> None:
        a = self.application
        a.add_handler(TypeHandler(Update, self._dedup), group=-2)
        # Any time, in any step, without touching the conversation.
        a.add_handler(CommandHandler("status", self._status_command, filters=PRIVATE), group=-1)
        a.add_handler(MessageHandler(TEXT, self._status_or_answer), group=-1)
        a.add_handler(CallbackQueryHandler(self._notification_button, pattern=r"^n:"), group=-1)
        # The conversation, then what it does not take (no conversation open).
        a.add_handler(self.intake_handler)
        a.add_handler(CommandHandler(["start", "help"], self._welcome, filters=PRIVATE))
        a.add_handler(CommandHandler("cancel", self._cancel, filters=PRIVATE))
        a.add_handler(CallbackQueryHandler(self._stale_button))
        a.add_handler(MessageHandler(PRIVATE & filters.COMMAND, self._welcome))
        a.add_handler(MessageHandler(PRIVATE, self._unsupported))
        a.add_error_handler(self._error)

    async def _dedup(self, update: Update, _context: Context) -> None:
        # Telegram re-sends an update it got no 200 for; polling may hand one over twice after a restart.
        if not await self.conv.claim_message(CHANNEL, str(update.update_id)):
            log.info("telegram duplicate update", extra={"event": "tg_duplicate", "update_id": update.update_id})
            raise ApplicationHandlerStop

    async def _error(self, update: object, context: Context) -> None:
        log.error("telegram handler failed", exc_info=context.error, extra={"event": "tg_failed"})
        if isinstance(update, Update):
            await self.conv.release_message(CHANNEL, str(update.update_id))
            chat = update.effective_chat
            if chat is not None:
                with contextlib.suppress(TelegramError):
                    await self.application.bot.send_message(chat.id, BUSY)

    # drafts ---------------------------------------------------------------------
    @staticmethod
    def _draft(context: Context) -> Dialogue | None:
        raw = (context.chat_data or {}).get(DRAFT)
        if not isinstance(raw, dict):
            return None
        try:
            return Dialogue(**{k: v for k, v in raw.items() if k in Dialogue.__dataclass_fields__})
        except TypeError:
            return None

    @staticmethod
    def _keep(context: Context, d: Dialogue, state: str) -> str:
        """The draft goes with the conversation's new state (written to Redis once the update is done)."""
        d.state, d.updated_at = state, time.time()
        assert context.chat_data is not None
        context.chat_data[DRAFT] = asdict(d)
        return state

    @staticmethod
    def _drop(context: Context) -> object:
        if context.chat_data is not None:
            context.chat_data.pop(DRAFT, None)
        return END

    def _stale(self, d: Dialogue) -> bool:
        timeout = self.cfg.conversation_timeout_s
        return bool(timeout) and time.time() - d.updated_at > timeout

    def _step(self, fn: Callable[[Update, Context, Dialogue], Awaitable[object]]) -> Step:
        """A step of an open conversation, given its draft. A conversation restored from Redis whose
        timeout passed while no timer ran (the process was down), or whose draft is gone, is ended first
        and this update starts afresh."""

        async def run(update: Update, context: Context) -> object:
            d = self._draft(context)
            if d is None or self._stale(d):
                self._drop(context)
                await self._say(update, Outgoing(TIMED_OUT))
                return await self._begin(update, context)
            return await fn(update, context, d)

        run.__name__ = fn.__name__
        return run

    # replying ---------------------------------------------------------------------
    async def _say(self, update: Update, *outs: Outgoing) -> None:
        chat = update.effective_chat
        assert chat is not None
        await self.send_outs(chat.id, list(outs))

    async def _confirm(self, update: Update, context: Context, d: Dialogue, lead: str = "") -> str:
        d.prompt_at = time.time()
        await self._say(update, confirm_prompt(d, lead))
        return self._keep(context, d, CONFIRM)

    # entry points -------------------------------------------------------------------
    async def _begin(self, update: Update, context: Context) -> object:
        """Start of a conversation from whatever the citizen sent (also after a stale one was ended)."""
        m = update.message
        if update.callback_query is not None:
            return await self._stale_button(update, context) or END
        if m is None:
            return END
        if m.text and not m.text.startswith("/"):
            return await self._begin_text(update, context)
        if m.voice:
            return await self._begin_voice(update, context)
        if m.location:
            return await self._begin_location(update, context)
        if m.photo:
            return await self._begin_photo(update, context)
        if m.text:
            await self._say(update, Outgoing(WELCOME))
        else:
            await self._say(update, Outgoing(UNSUPPORTED))
        return END

    async def _begin_text(self, update: Update, context: Context) -> object:
        return await self._describe_text(update, context, Dialogue(), stay=END)

    async def _begin_voice(self, update: Update, context: Context) -> object:
        return await self._describe_voice(update, context, Dialogue(), stay=END)

    async def _begin_location(self, update: Update, context: Context) -> object:
        return await self._describe_location(update, context, Dialogue())

    async def _begin_photo(self, update: Update, context: Context) -> object:
        d = Dialogue()
        assert update.message is not None
        add_image(d, await self._photo_ref(update))
        await self._say(update, Outgoing("已收到图片。" + ASK_TEXT))
        return self._keep(context, d, DESCRIBE)

    async def _cancel_or_help(self, update: Update, context: Context, d: Dialogue, text: str,
                              state: object) -> object | None:
        """取消 ends the conversation, 帮助 shows the welcome and stays in ``state`` (END: no state kept);
        None for any other text."""
        if is_cancel(text):
            await self._say(update, Outgoing(CANCELLED))
            return self._drop(context)
        if is_help(text):
            await self._say(update, Outgoing(WELCOME))
            return END if state == END else self._keep(context, d, str(state))
        return None

    # describe ----------------------------------------------------------------------------
    async def _describe_text(self, update: Update, context: Context, d: Dialogue, stay: object = DESCRIBE) -> object:
        assert update.message is not None and update.message.text is not None
        text = update.message.text.strip()[:MAX_TEXT_CHARS]
        handled = await self._cancel_or_help(update, context, d, text,
                                             stay if stay == END else DESCRIBE)
        if handled is not None:
            return handled
        return await self._take_problem(update, context, d, text, "", stay)

    async def _describe_voice(self, update: Update, context: Context, d: Dialogue,
                              stay: object = DESCRIBE) -> object:
        voice = update.message.voice if update.message else None
        assert voice is not None
        text = (await self._transcribe(voice))[:MAX_TEXT_CHARS]
        if not text:
            await self._say(update, Outgoing(VOICE_UNREADABLE))
            return stay if stay == END else self._keep(context, d, DESCRIBE)
        return await self._take_problem(update, context, d, text, f"telegram:voice?file_id={quote(voice.file_id)}",
                                        stay)

    async def _take_problem(self, update: Update, context: Context, d: Dialogue, text: str, audio_ref: str,
                            stay: object) -> object:
        chat = update.effective_chat
        assert chat is not None
        try:
            self.intake.validate(InboundMessage(channel=CHANNEL, sender=sender_of(chat.id), text=text,
                                                address=d.address))
        except IntakeError as exc:
            await self._say(update, Outgoing(exc.message))
            return stay if stay == END else self._keep(context, d, DESCRIBE)
        d.text = text
        if audio_ref:
            d.transcript, d.audio_ref = text, audio_ref
        if place_known(d):
            return await self._confirm(update, context, d)
        await self._say(update, Outgoing(ASK_PLACE, ask_location=True))
        return self._keep(context, d, PLACE)

    async def _describe_location(self, update: Update, context: Context, d: Dialogue) -> object:
        loc = self._location(update)
        take_location(d, loc)
        await self._say(update, Outgoing(location_received(loc)))
        return self._keep(context, d, DESCRIBE)

    async def _add_photo(self, update: Update, context: Context, d: Dialogue) -> object:
        state = d.state if d.state in (DESCRIBE, PLACE, CONFIRM) else DESCRIBE
        if not add_image(d, await self._photo_ref(update)):
            await self._say(update, Outgoing(IMAGES_FULL))
            return self._keep(context, d, state)
        if state == CONFIRM:
            return await self._confirm(update, context, d, IMAGE_WITH_CASE)
        if state == PLACE:
            await self._say(update, Outgoing("已收到图片。" + ASK_PLACE, ask_location=True))
        else:
            await self._say(update, Outgoing("已收到图片。" + ASK_TEXT))
        return self._keep(context, d, state)

    # place ---------------------------------------------------------------------------------
    async def _place_text(self, update: Update, context: Context, d: Dialogue) -> object:
        assert update.message is not None and update.message.text is not None
        text = update.message.text.strip()[:MAX_TEXT_CHARS]
        handled = await self._cancel_or_help(update, context, d, text, PLACE)
        if handled is not None:
            return handled
        take_place(d, text)
        return await self._confirm(update, context, d)

    async def _place_voice(self, update: Update, context: Context, d: Dialogue) -> object:
        voice = update.message.voice if update.message else None
        assert voice is not None
        text = (await self._transcribe(voice))[:MAX_TEXT_CHARS]
        if not text:
            await self._say(update, Outgoing(VOICE_UNREADABLE))
            return self._keep(context, d, PLACE)
        take_place(d, text)
        return await self._confirm(update, context, d)

    async def _place_location(self, update: Update, context: Context, d: Dialogue) -> object:
        take_location(d, self._location(update))
        return await self._confirm(update, context, d)

    # confirm ---------------------------------------------------------------------------------
    async def _confirm_button(self, update: Update, context: Context, d: Dialogue) -> object:
        query = update.callback_query
        assert query is not None
        await self._ack(update)
        done = await self._submit(update, context, d) if query.data == CONFIRM_YES else await self._cancel(
            update, context)
        await self._strip_buttons(update)
        return done

    async def _confirm_text(self, update: Update, context: Context, d: Dialogue) -> object:
        assert update.message is not None and update.message.text is not None
        text = update.message.text.strip()
        if is_yes(text) or text == "1":
            return await self._submit(update, context, d)
        if is_no(text) or is_cancel(text) or text == "2":
            return await self._cancel(update, context)
        if is_help(text):
            await self._say(update, Outgoing(WELCOME))
            return self._keep(context, d, CONFIRM)
        return await self._confirm(update, context, d, CONFIRM_AGAIN)

    async def _confirm_location(self, update: Update, context: Context, d: Dialogue) -> object:
        take_location(d, self._location(update))
        return await self._confirm(update, context, d)

    async def _submit(self, update: Update, context: Context, d: Dialogue) -> object:
        chat = update.effective_chat
        assert chat is not None
        sender = sender_of(chat.id)
        # Any other failure (store away) leaves the step and the draft as they were: the error handler
        # says "busy" and the citizen's next tap submits the same draft.
        try:
            result = await self.intake.submit(intake_message(CHANNEL, sender, d, f"u{update.update_id}"))
        except IntakeError as exc:
            await self._say(update, Outgoing(exc.message + "请重新描述您的问题。"))
            return self._drop(context)
        self._drop(context)
        await self.conv.add_case(CHANNEL, sender, result.case.id, result.case.created_at)
        log.info("chat case", extra={"event": "chat_case", "channel": CHANNEL, "case_id": result.case.id,
                                     "new_case": result.created})
        await self._say(update, Outgoing(case_number_text(result)))
        return END

    # fallbacks and outside the conversation -------------------------------------------------
    async def _cancel(self, update: Update, context: Context) -> object:
        await self._say(update, Outgoing(CANCELLED))
        return self._drop(context)

    async def _help_in_conversation(self, update: Update, context: Context) -> object:
        await self._say(update, Outgoing(WELCOME))
        return self._still(context)

    async def _unsupported_in_conversation(self, update: Update, context: Context) -> object:
        await self._say(update, Outgoing(UNSUPPORTED))
        return self._still(context)

    def _still(self, context: Context) -> object:
        """Stay in the current step; the draft's clock restarts like the conversation's timer does."""
        d = self._draft(context)
        if d is None or d.state not in (DESCRIBE, PLACE, CONFIRM):
            return END
        return self._keep(context, d, d.state)

    async def _stale_button(self, update: Update, _context: Context) -> None:
        # A button of an earlier step, of a finished conversation, or data no button of ours carries.
        await self._ack(update)
        chat = update.effective_chat
        if chat is None or chat.type != "private":
            return
        await self._say(update, Outgoing(EXPIRED))
        await self._strip_buttons(update)

    async def _welcome(self, update: Update, _context: Context) -> None:
        await self._say(update, Outgoing(WELCOME))

    async def _unsupported(self, update: Update, _context: Context) -> None:
        await self._say(update, Outgoing(UNSUPPORTED))

    async def _timed_out(self, update: Update, context: Context) -> None:
        """TIMEOUT step: PTB ends the conversation after this; the draft is dropped here, in Redis too."""
        chat, user = update.effective_chat, update.effective_user
        if chat is None:
            return
        self._drop(context)
        await self.state.update_chat_data(chat.id, dict(context.chat_data or {}))
        if user is not None:
            await self.state.update_conversation(CONVERSATION_NAME, (chat.id, user.id), None)
        log.info("telegram conversation timed out", extra={"event": "tg_conv_timeout"})
        with contextlib.suppress(TelegramError):
            await self._say(update, Outgoing(TIMED_OUT))

    async def _status_command(self, update: Update, context: Context) -> None:
        chat = update.effective_chat
        assert chat is not None
        arg = context.args[0] if context.args else ""
        await self._say(update, await self.engine.status(CHANNEL, sender_of(chat.id), arg[:64]))
        raise ApplicationHandlerStop

    async def _status_or_answer(self, update: Update, context: Context) -> None:
        """``查询 <案件号>`` at any step; a lone digit answers the latest notification question, unless our
        confirmation was asked after it (then it belongs to the conversation, as on WeChat)."""
        chat = update.effective_chat
        assert chat is not None and update.message is not None and update.message.text is not None
        text = update.message.text.strip()
        asked = status_query(text)
        if asked is not None:
            await self._say(update, await self.engine.status(CHANNEL, sender_of(chat.id), asked))
            raise ApplicationHandlerStop
        if not (len(text) == 1 and ascii_digits(text)):
            return
        q = await self.conv.question(CHANNEL, sender_of(chat.id))
        d = self._draft(context)
        if q is None or (d is not None and d.state == CONFIRM and d.prompt_at >= q.asked_at):
            return
        n = int(text)
        if not 1 <= n <= len(q.options):
            await self._say(update, Outgoing(number_options("请回复选项前的数字。", q.options)))
        else:
            await self._run_engine(update, "button", f"n:{q.token}:{n - 1}")
        raise ApplicationHandlerStop

    async def _notification_button(self, update: Update, _context: Context) -> None:
        """An answer to a notification's options (survey): the engine checks the question is this chat's."""
        await self._ack(update)
        chat = update.effective_chat
        query = update.callback_query
        assert query is not None
        if chat is not None and chat.type == "private":
            await self._run_engine(update, "button", str(query.data or "")[:64])
            await self._strip_buttons(update)
        raise ApplicationHandlerStop

    async def _run_engine(self, update: Update, kind: str, text: str) -> None:
        chat = update.effective_chat
        assert chat is not None
        inc = Incoming(CHANNEL, sender_of(chat.id), kind, text=text, key=f"u{update.update_id}")
        await self.send_outs(chat.id, await self.engine.handle(inc))

    async def _ack(self, update: Update) -> None:
        if update.callback_query is not None:
            with contextlib.suppress(TelegramError):
                await update.callback_query.answer()

    async def _strip_buttons(self, update: Update) -> None:
        # The buttons have done their job; a second tap on an old message would only say "expired".
        query, chat = update.callback_query, update.effective_chat
        if query is not None and query.message is not None and chat is not None:
            with contextlib.suppress(TelegramError):
                await self.application.bot.edit_message_reply_markup(chat.id, query.message.message_id,
                                                                     reply_markup=None)

    # message parts ------------------------------------------------------------------------
    @staticmethod
    def _location(update: Update) -> Location:
        m = update.message
        assert m is not None and m.location is not None
        label = m.venue.title if m.venue else ""
        return Location(m.location.latitude, m.location.longitude, label[:200])

    async def _photo_ref(self, update: Update) -> str:
        """The photo kept in our own store (staff and departments can open it), or Telegram's file id when
        it cannot be fetched now (too large, Bot API unreachable): the case is filed either way."""
        m = update.message
        assert m is not None and m.photo
        biggest = max(m.photo, key=lambda p: p.width * p.height)
        fallback = f"telegram:photo?file_id={quote(biggest.file_id)}"
        files = self.app.get(ATTACHMENTS)
        if files is None or (biggest.file_size or 0) > files.max_bytes:
            return fallback
        try:
            file = await self.application.bot.get_file(biggest.file_id)
            data = await self._download(file, files.max_bytes)
            if data is None:
                return fallback
            return await asyncio.to_thread(files.save, data)
        except (TelegramError, AttachmentError, OSError):
            log.warning("telegram photo not fetched", extra={"event": "tg_photo_failed"})
        return fallback

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
            data = await self._download(file, self.cfg.max_voice_bytes)
            if data is None:
                return ""
            return (await stt.transcribe_audio(data)).text.strip()
        except TelegramError:
            log.warning("telegram voice download failed", extra={"event": "tg_voice_failed"})
        except Exception:
            log.exception("speech recognition failed", extra={"event": "stt_failed", "channel": CHANNEL})
        return ""

    async def _download(self, file: Any, limit: int) -> bytes | None:
        """The file's bytes from the Bot API file server, or None: not on that server, over ``limit`` bytes, or
        not complete within ``download_deadline_s`` (the chat's other updates wait behind this one)."""
        url = str(file.file_path or "")
        # PTB reads a local path from disk as is; only a download from the Bot API's file server is taken.
        if not url.startswith(self.application.bot.base_file_url + "/"):
            return None
        if (file.file_size or 0) > limit:
            return None
        if self._http is None or self._http.closed:
            # trust_env: the same proxy environment PTB's httpx client uses to reach Telegram.
            self._http = aiohttp.ClientSession(trust_env=True)
        buf = bytearray()
        try:
            async with asyncio.timeout(self.download_deadline_s):
                async with self._http.get(url, allow_redirects=False) as resp:
                    if resp.status != 200 or (resp.content_length or 0) > limit:
                        reason = f"http {resp.status}" if resp.status != 200 else "too large"
                        log.warning("telegram file not downloaded", extra={"event": "tg_download_refused",
                                                                           "reason": reason})
                        return None
                    async for chunk in resp.content.iter_chunked(65536):
                        buf += chunk
                        if len(buf) > limit:
                            log.warning("telegram file not downloaded", extra={"event": "tg_download_refused",
                                                                               "reason": "too large"})
                            return None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # The URL holds the bot token: only the kind of failure is logged.
            log.warning("telegram file not downloaded", extra={"event": "tg_download_failed",
                                                               "error": type(exc).__name__})
            return None
        return bytes(buf)

    async def close_http(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

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
            data = parse_json(buf)
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
            if isinstance(self.application.bot, PollingBot):
                self.application.bot.poll.stopping = False  # a failed attempt's _stop set it
            try:
                await self.application.initialize()
                await self.application.start()
                if self.cfg.mode == "webhook" and self.cfg.webhook_url:
                    await self.application.bot.set_webhook(self.cfg.webhook_url, secret_token=self.cfg.secret_token,
                                                           allowed_updates=ALLOWED_UPDATES)
                if self.cfg.mode == "poll":
                    updater = self.application.updater
                    assert updater is not None
                    await updater.start_polling(allowed_updates=ALLOWED_UPDATES, poll_interval=POLL_INTERVAL_S,
                                                timeout=30, error_callback=_poll_error)
                self.ready.set()
                me = self.application.bot.username
                log.info("telegram channel on", extra={"event": "channel_on", "channel": CHANNEL,
                                                       "mode": self.cfg.mode, "bot": me})
                return
            except TelegramError as exc:
                log.warning("telegram not reachable, retrying", extra={"event": "tg_init_failed",
                                                                       "error": type(exc).__name__,
                                                                       "retry_s": delay})
                await self._stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def _stop(self) -> None:
        """Stop polling and the application; never raises, so the rest of the shutdown runs."""
        bot = self.application.bot
        if isinstance(bot, PollingBot):
            bot.poll.stopping = True
        try:
            updater = self.application.updater
            if updater is not None and updater.running:
                await updater.stop()
            if self.application.running:
                await self.application.stop()
            await self.application.shutdown()
        except Exception as exc:
            log.warning("telegram shutdown incomplete", extra={"event": "tg_stop_failed",
                                                               "error": type(exc).__name__})


def _poll_error(exc: TelegramError) -> None:
    # PTB's default logs a traceback per failed getUpdates; the kind of failure is what helps.
    log.warning("telegram getUpdates failed", extra={"event": "tg_poll_failed", "error": type(exc).__name__})


TELEGRAM_DOOR = web.AppKey("telegram_door", TelegramDoor)


def setup(app: web.Application) -> None:
    cfg = TelegramConfig.from_settings(app[SETTINGS])
    if not cfg.token:
        log.info("telegram channel off: telegram.token is empty", extra={"event": "channel_off",
                                                                          "channel": CHANNEL})
        return
    # httpx logs every request URL at INFO, and Bot API URLs contain the bot token (setup_logging does the
    # same for the service; this covers an app built without it).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

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
                await door._stop()
            await door.close_http()

    async def webhook(request: web.Request) -> web.Response:
        return await request.app[TELEGRAM_DOOR].webhook(request)

    app.cleanup_ctx.append(ctx)
    if cfg.mode == "webhook":
        app.router.add_post(cfg.webhook_path, webhook)
