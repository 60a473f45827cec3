"""Channel-neutral notifications: tell citizens about their case on the channel they used.

Dispatch, callbacks and answers call ``Notifications.notify_case``; each chat or voice channel
registers a ``Notifier`` for its channel name at start-up. A case's merged reporters are told too,
each on their own channel. Every attempt is written to the case's audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hotline.records import Case
from hotline.store import Store

log = logging.getLogger("hotline.notify")


@dataclass
class Notification:
    case_id: str
    kind: str  # received | dispatched | resolved | reopened | survey | answer | …
    text: str
    channel: str
    recipient: str  # the channel's own id of the citizen (openid, chat id, caller number)
    contact: str = ""
    report_id: str = ""  # set when the recipient is a merged reporter, not the case's first reporter
    # Choices offered with the message, e.g. survey answers: (value, label) pairs.
    options: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    async def send(self, notification: Notification) -> bool:
        """Deliver or queue the message; False when the channel cannot reach this citizen now."""
        ...


@dataclass
class Reply:
    """A citizen's answer to a notification that offered options (a survey, 是否解决了您的问题?)."""

    case_id: str
    kind: str
    value: str  # one of the offered option values
    channel: str
    sender: str
    report_id: str = ""
    comment: str = ""


# Returns the text to send back to the citizen.
ReplyHandler = Callable[[Reply], Awaitable[str]]


class Notifications:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._by_channel: dict[str, Notifier] = {}
        self._reply_handlers: dict[str, ReplyHandler] = {}

    def on_reply(self, kind: str, handler: ReplyHandler) -> None:
        """The feature that sends notifications of ``kind`` with options handles the answers."""
        self._reply_handlers[kind] = handler

    async def reply(self, reply: Reply) -> str:
        handler = self._reply_handlers.get(reply.kind)
        if handler is None:
            return "感谢您的回复。"
        return await handler(reply)

    def register(self, channel: str, notifier: Notifier) -> None:
        self._by_channel[channel] = notifier

    def notifier(self, channel: str) -> Notifier | None:
        return self._by_channel.get(channel)

    def recipients(self, case: Case, include_reports: bool = True) -> list[Notification]:
        out = [Notification(case.id, "", "", case.channel, case.sender, case.contact)]
        if include_reports:
            out += [Notification(case.id, "", "", r.channel, r.sender, r.contact, report_id=r.report_id)
                    for r in case.reports]
        return out

    async def notify_case(self, case: Case, kind: str, text: str, *,
                          options: Sequence[tuple[str, str]] = (), include_reports: bool = True,
                          meta: dict[str, Any] | None = None) -> list[tuple[Notification, bool]]:
        results: list[tuple[Notification, bool]] = []
        for n in self.recipients(case, include_reports):
            n.kind, n.text, n.options, n.meta = kind, text, list(options), dict(meta or {})
            results.append((n, await self.send(n)))
        return results

    async def send(self, n: Notification) -> bool:
        notifier = self._by_channel.get(n.channel)
        ok = False
        if notifier is not None:
            try:
                ok = await notifier.send(n)
            except Exception:
                # One channel failing (platform down, citizen blocked the bot) must not stop the others.
                log.exception("notification failed", extra={"event": "notify_failed", "case_id": n.case_id,
                                                            "channel": n.channel})
        await self.store.add_event(n.case_id, actor="system", action="notified",
                                   data={"kind": n.kind, "channel": n.channel, "report_id": n.report_id,
                                         "delivered": ok, "reason": "" if notifier else "no_channel_notifier"})
        return ok
