"""The chat conversation of the chat doors: from first words to a case number.

describe the problem → (no place known) ask for the address or a location share → confirm → case number.
Besides: ``查询 <案件号>`` / ``/status`` shows the citizen's own cases, ``取消`` starts over, and answers to
notifications that offered options (survey questions) go to ``Notifications.reply``.

WeChat runs the whole dialogue through ``Conversation``, whose state lives in Redis (hotline/store/
conversations.py), not in the process: a restart, a second server or a platform retry landing on another
worker continues the same conversation. Telegram runs the same steps as a PTB ConversationHandler
(hotline/channels/telegram.py) built from the module-level helpers below, and uses ``Conversation`` for
status requests and notification answers; so both doors word and decide every step alike.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from hotline.intake import Intake, IntakeError, IntakeResult
from hotline.notify import Notification, Notifications, Reply
from hotline.numbers import ascii_digits
from hotline.progress import PUBLIC_EVENTS, citizen_progress
from hotline.records import Case, InboundMessage, Location, mask_pii
from hotline.status import LABELS_ZH
from hotline.store import CaseNotFound, Event, Store
from hotline.store.conversations import ConversationStore, Dialogue, PendingQuestion

log = logging.getLogger("hotline.chat")

CONFIRM_YES = "c:yes"
CONFIRM_NO = "c:no"
CONFIRM_OPTIONS = [(CONFIRM_YES, "确认提交"), (CONFIRM_NO, "取消")]
MAX_OPTIONS = 9  # numbered answers are one digit
MAX_TEXT_CHARS = 2000  # one chat message; longer descriptions are cut, not refused

WELCOME = (
    "您好，这里是12345市民服务热线（一号通）。\n"
    "请直接发送文字或语音，描述您要反映的问题（如：XX路路灯不亮），我们会为您登记并告知案件编号。\n"
    "查询办理进度：发送“查询 案件编号”。重新开始：发送“取消”。\n"
    "如遇火灾、燃气泄漏、有人被困等紧急情况，请立即拨打110、119、120。"
)
ASK_PLACE = "请告诉我们问题发生的具体地点（如：XX区XX路XX号附近），或直接发送位置。如不清楚地点，请回复“跳过”。"
ASK_TEXT = "请用文字或语音描述您要反映的问题。"
VOICE_UNREADABLE = "抱歉，暂时无法识别这条语音，请用文字描述您要反映的问题。"
UNSUPPORTED = "抱歉，暂不支持这类消息。请发送文字、语音、图片或位置。"
BUSY = "系统繁忙，请稍后再发送一次。"
NOT_YOURS = "未找到该案件，或该案件不是由您本人反映的。请核对案件编号。"
EXPIRED = "该选项已失效，请按最新的提示操作。"
CANCELLED = "已取消。如需反映问题，请直接发送文字或语音。"
CONFIRM_AGAIN = "请确认是否提交。如需修改，请回复“取消”后重新描述。"
IMAGES_FULL = "图片已达上限（9 张），其余图片不再保存。"
IMAGE_WITH_CASE = "已收到图片，将随诉求一并提交。"
TIMED_OUT = "由于长时间未收到您的回复，本次登记已取消，内容未提交。如需反映问题，请重新发送。"
MAX_IMAGES = 9

# "查询 20260101-000123", "查询20260101-000123", "/status x"; but "查询一下…" is a citizen's sentence.
_STATUS = re.compile(r"^\s*(?:/status(?:@\w+)?|查询|查詢|进度)(?:\s*[:：]?\s*([0-9\-]+)|\s+(\S+))?\s*$",
                     re.IGNORECASE)
_CASE_ID = re.compile(r"^\d{8}-\d{6}$")
_CANCEL = {"取消", "/cancel", "重新开始", "算了"}
_HELP = {"/start", "/help", "帮助", "你好", "您好", "hi", "hello", "菜单", "?", "？"}
_YES = {"确认", "是", "是的", "对", "提交", "确认提交", "好", "好的", "ok", "yes", "y"}
_NO = {"否", "不", "不是", "no", "n"}
_SKIP = {"跳过", "不清楚", "不知道", "无"}

@dataclass
class Incoming:
    """One thing a citizen did in a chat, already turned into plain values by the channel adapter."""

    channel: str
    sender: str  # WeChat openid, "tg:<chat id>"
    kind: str  # text | voice | location | image | button | start | unsupported
    text: str = ""  # typed text, the voice transcript, or a button's data
    location: Location | None = None
    attachment: str = ""
    audio_ref: str = ""
    key: str = ""  # platform message id: makes the case submission idempotent


@dataclass
class Outgoing:
    text: str
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label)
    ask_location: bool = False  # Telegram shows a "send location" keyboard button


def number_options(text: str, options: list[tuple[str, str]]) -> str:
    """Numbered choices for channels without buttons (WeChat)."""
    if not options:
        return text
    lines = [f"回复 {i} {label}" for i, (_value, label) in enumerate(options, 1)]
    return text + "\n" + "\n".join(lines)


# Shared steps of the intake dialogue: every chat door words and decides them the same way. ---------------


def status_query(text: str) -> str | None:
    """The case number asked about ('' for "my cases"), or None when the text is not a status request."""
    m = _STATUS.match(text)
    return (m.group(1) or m.group(2) or "") if m else None


def is_cancel(text: str) -> bool:
    return text.strip().lower() in _CANCEL


def is_help(text: str) -> bool:
    return text.strip().lower() in _HELP


def is_yes(text: str) -> bool:
    return text.strip().lower() in _YES


def is_no(text: str) -> bool:
    return text.strip().lower() in _NO


def place_known(d: Dialogue) -> bool:
    """An address or a location share is already there: no need to ask for the place."""
    return bool(d.address or d.location)


def take_place(d: Dialogue, text: str) -> None:
    """The answer to ASK_PLACE: an address, or a word meaning "I don't know" (the case goes on without)."""
    text = text.strip()
    if text.lower() not in _SKIP:
        d.address = text[:200]


def take_location(d: Dialogue, loc: Location) -> None:
    d.location = {"lat": loc.lat, "lon": loc.lon, "label": loc.label[:200]}


def location_received(loc: Location) -> str:
    where = f"（{loc.label[:60]}）" if loc.label else ""
    return f"已收到您的位置{where}。" + ASK_TEXT


def add_image(d: Dialogue, ref: str) -> bool:
    """False when the draft already holds the most images a case takes."""
    if len(d.attachments) >= MAX_IMAGES:
        return False
    d.attachments.append(ref[:500])
    return True


def confirm_prompt(d: Dialogue, lead: str = "") -> Outgoing:
    if d.address:
        place = d.address
    elif d.location:
        loc = d.location
        place = loc.get("label") or f"位置坐标 {loc['lat']:.5f}, {loc['lon']:.5f}"
    else:
        place = "未提供"
    lines = [lead] if lead else []
    lines += ["请确认您要反映的问题：", f"问题：{d.text[:300]}", f"地点：{place}"]
    if d.attachments:
        lines.append(f"图片：{len(d.attachments)} 张")
    return Outgoing("\n".join(lines), options=list(CONFIRM_OPTIONS))


def intake_message(channel: str, sender: str, d: Dialogue, key: str) -> InboundMessage:
    """The confirmed draft as the pipeline's input; ``key`` is the confirming message's platform id, so a
    retried confirmation never makes a second case."""
    loc = d.location
    return InboundMessage(
        channel=channel, sender=sender, text=d.text, address=d.address,
        location=Location(float(loc["lat"]), float(loc["lon"]), str(loc.get("label", ""))) if loc else None,
        audio_ref=d.audio_ref, transcript=d.transcript, attachments=list(d.attachments),
        idempotency_key=key, meta={"via": "chat"},
    )


def case_number_text(result: IntakeResult) -> str:
    return result.reply.replace("可凭编号和手机号后四位查询办理进度", f"可发送“查询 {result.case.id}”查询办理进度")


def owns(case: Case, channel: str, sender: str) -> bool:
    """A citizen may see a case they reported, or one their own report was merged into."""
    who = sender[:200]
    if case.channel == channel and case.sender == who:
        return True
    return any(r.channel == channel and r.sender == who for r in case.reports)


class Conversation:
    def __init__(self, intake: Intake, store: Store, conv: ConversationStore, notifications: Notifications,
                 timezone: str = "Asia/Shanghai") -> None:
        self.intake = intake
        self.store = store
        self.conv = conv
        self.notifications = notifications
        self.tz = ZoneInfo(timezone)

    # entry ------------------------------------------------------------------
    async def handle(self, inc: Incoming) -> list[Outgoing]:
        token = await self.conv.lock(inc.channel, inc.sender)
        if not token:
            return [Outgoing(BUSY)]
        try:
            return await self._handle(inc)
        finally:
            await self.conv.unlock(inc.channel, inc.sender, token)

    async def _handle(self, inc: Incoming) -> list[Outgoing]:
        d = await self.conv.dialogue(inc.channel, inc.sender)
        if inc.kind == "start":
            return [Outgoing(WELCOME)]
        if inc.kind == "unsupported":
            return [Outgoing(UNSUPPORTED)]
        if inc.kind == "button":
            return await self._button(inc, d)
        if inc.kind == "location" and inc.location is not None:
            return await self._location(inc, d)
        if inc.kind == "image" and inc.attachment:
            return await self._image(inc, d)
        if inc.kind == "voice" and not inc.text.strip():
            return [Outgoing(VOICE_UNREADABLE)]
        if inc.kind in ("text", "voice"):
            return await self._text(inc, d)
        return [Outgoing(UNSUPPORTED)]

    # text -------------------------------------------------------------------
    async def _text(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        text = inc.text.strip()[:MAX_TEXT_CHARS]
        low = text.lower()
        if inc.kind == "text":
            asked = status_query(text)
            if asked is not None:
                return [await self.status(inc.channel, inc.sender, asked)]
            if low in _CANCEL:
                await self.conv.save_dialogue(inc.channel, inc.sender, Dialogue())
                return [Outgoing(CANCELLED)]
            if low in _HELP:
                return [Outgoing(WELCOME)]
        if ascii_digits(text) and len(text) == 1:
            chosen = await self._numbered(inc, d, int(text))
            if chosen is not None:
                return chosen
        if d.state == "await_confirm":
            if low in _YES:
                return await self._submit(inc, d)
            if low in _NO:
                return await self._cancel(inc)
            return [confirm_prompt(d, CONFIRM_AGAIN)]
        if d.state == "await_place":
            take_place(d, text)
            d.state = "await_confirm"
            return await self._save_and_confirm(inc, d)
        # idle or await_text: this is the description of the problem
        problem = InboundMessage(channel=inc.channel, sender=inc.sender, text=text, address=d.address)
        try:
            self.intake.validate(problem)
        except IntakeError as exc:
            return [Outgoing(exc.message)]
        d.text = text
        if inc.kind == "voice":
            d.transcript, d.audio_ref = text, inc.audio_ref
        if place_known(d):
            d.state = "await_confirm"
            return await self._save_and_confirm(inc, d)
        d.state = "await_place"
        await self.conv.save_dialogue(inc.channel, inc.sender, d)
        return [Outgoing(ASK_PLACE, ask_location=True)]

    async def _numbered(self, inc: Incoming, d: Dialogue, n: int) -> list[Outgoing] | None:
        """A one-digit answer: to our confirmation or to a notification's options, whichever came last."""
        q = await self.conv.question(inc.channel, inc.sender)
        if d.state == "await_confirm" and (q is None or d.prompt_at >= q.asked_at):
            if n == 1:
                return await self._submit(inc, d)
            if n == 2:
                return await self._cancel(inc)
            return [confirm_prompt(d, "请回复 1 或 2。")]
        if q is not None:
            if not 1 <= n <= len(q.options):
                return [Outgoing(number_options("请回复选项前的数字。", q.options))]
            return await self._answer(inc, q, q.options[n - 1][0])
        return None

    # buttons ------------------------------------------------------------------
    async def _button(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        data = inc.text
        if data in (CONFIRM_YES, CONFIRM_NO):
            if d.state != "await_confirm":
                return [Outgoing(EXPIRED)]
            return await self._submit(inc, d) if data == CONFIRM_YES else await self._cancel(inc)
        parts = data.split(":")
        if len(parts) == 3 and parts[0] == "n" and ascii_digits(parts[2]):
            q = await self.conv.question_by_token(parts[1])
            # Callback data can be forged by modified clients: the question must be this citizen's own.
            if q is None or q.channel != inc.channel or q.sender != inc.sender:
                return [Outgoing(EXPIRED)]
            i = int(parts[2])
            if not 0 <= i < len(q.options):
                return [Outgoing(EXPIRED)]
            return await self._answer(inc, q, q.options[i][0])
        return [Outgoing(EXPIRED)]

    async def _answer(self, inc: Incoming, q: PendingQuestion, value: str) -> list[Outgoing]:
        # Dropped first: a double tap on the same button must not answer twice.
        await self.conv.drop_question(q)
        try:
            text = await self.notifications.reply(Reply(q.case_id, q.kind, value, inc.channel, inc.sender,
                                                        q.report_id))
        except Exception:
            await self.conv.put_question(q)
            raise
        # An empty answer means the feature already sent the next question itself.
        return [Outgoing(text)] if text else []

    # location / image -------------------------------------------------------------
    async def _location(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        loc = inc.location
        assert loc is not None
        take_location(d, loc)
        if d.state in ("await_place", "await_confirm") and d.text:
            d.state = "await_confirm"
            return await self._save_and_confirm(inc, d)
        d.state = "await_text"
        await self.conv.save_dialogue(inc.channel, inc.sender, d)
        return [Outgoing(location_received(loc))]

    async def _image(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        if not add_image(d, inc.attachment):
            return [Outgoing(IMAGES_FULL)]
        if d.state == "idle":
            d.state = "await_text"
        await self.conv.save_dialogue(inc.channel, inc.sender, d)
        if d.state == "await_confirm":
            return [confirm_prompt(d, IMAGE_WITH_CASE)]
        if d.state == "await_place":
            return [Outgoing("已收到图片。" + ASK_PLACE, ask_location=True)]
        return [Outgoing("已收到图片。" + ASK_TEXT)]

    # confirmation and submission -----------------------------------------------------
    async def _save_and_confirm(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        d.prompt_at = time.time()
        await self.conv.save_dialogue(inc.channel, inc.sender, d)
        return [confirm_prompt(d)]

    async def _cancel(self, inc: Incoming) -> list[Outgoing]:
        await self.conv.save_dialogue(inc.channel, inc.sender, Dialogue())
        return [Outgoing(CANCELLED)]

    async def _submit(self, inc: Incoming, d: Dialogue) -> list[Outgoing]:
        try:
            result = await self.intake.submit(intake_message(inc.channel, inc.sender, d, inc.key))
        except IntakeError as exc:
            await self.conv.save_dialogue(inc.channel, inc.sender, Dialogue())
            return [Outgoing(exc.message + "请重新描述您的问题。")]
        await self.conv.add_case(inc.channel, inc.sender, result.case.id, result.case.created_at)
        await self.conv.save_dialogue(inc.channel, inc.sender, Dialogue())
        log.info("chat case", extra={"event": "chat_case", "channel": inc.channel, "case_id": result.case.id,
                                     "new_case": result.created})
        return [Outgoing(case_number_text(result))]

    # status ---------------------------------------------------------------------------
    async def status(self, channel: str, sender: str, case_id: str) -> Outgoing:
        if not case_id:
            ids = await self.conv.cases(channel, sender)
            if not ids:
                return Outgoing("您还没有通过本渠道反映过问题。查询其他案件请发送“查询 案件编号”。")
            lines = ["您最近反映的问题："]
            for case in await self.store.get_cases(ids):
                if owns(case, channel, sender):
                    lines.append(f"{case.id}：{LABELS_ZH[case.status]}（{case.text[:20]}）")
            lines.append("发送“查询 案件编号”查看详情。")
            return Outgoing("\n".join(lines))
        if not _CASE_ID.match(case_id):
            return Outgoing("案件编号格式不正确，应类似 20260101-000123。")
        try:
            case = await self.store.get_case(case_id)
        except CaseNotFound:
            return Outgoing(NOT_YOURS)
        # The same answer for "no such case" and "someone else's case": numbers cannot be probed.
        if not owns(case, channel, sender):
            return Outgoing(NOT_YOURS)
        return Outgoing(progress_text(case, await self.store.events(case.id), self.tz))


def progress_text(case: Case, events: list[Event], tz: ZoneInfo) -> str:
    """A case's progress as a chat message: status, the last public steps, unit, time limit, reply."""
    def local(ts: float, fmt: str = "%Y-%m-%d %H:%M") -> str:
        return datetime.fromtimestamp(ts, tz).strftime(fmt)

    lines = [f"案件编号：{case.id}", f"当前状态：{LABELS_ZH[case.status]}"]
    if case.duplicate_of:
        lines.append(f"已并入案件 {case.duplicate_of} 一并办理。")
    for e in [e for e in events if e.action in PUBLIC_EVENTS][-6:]:
        lines.append(f"{local(e.ts, '%m-%d %H:%M')} {PUBLIC_EVENTS[e.action]}")
    progress = citizen_progress(case)
    if progress.department:
        lines.append(f"承办单位：{progress.department}")
    if progress.deadline_at:
        lines.append(f"办理时限：{local(progress.deadline_at)} 前")
    reply = progress.reply or mask_pii(str((case.answer or {}).get("answer") or ""))
    if reply:
        lines.append(f"办理答复：{reply[:300]}")
    return "\n".join(lines)


async def remember_question(conv: ConversationStore, n: Notification) -> PendingQuestion | None:
    """Keep a notification's options so the citizen's button or number answers it."""
    if not n.options:
        return None
    q = PendingQuestion(token=secrets.token_hex(6), case_id=n.case_id, kind=n.kind, report_id=n.report_id,
                        options=[(str(v), str(label)) for v, label in n.options[:MAX_OPTIONS]],
                        channel=n.channel, sender=n.recipient, asked_at=time.time())
    await conv.put_question(q)
    return q
