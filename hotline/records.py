"""Plain records shared by channels, the pipeline and the store."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from hotline.numbers import digits_of
from hotline.status import Status


@dataclass
class Location:
    lat: float
    lon: float
    label: str = ""


@dataclass
class InboundMessage:
    """One message from any door, as a channel adapter hands it to the intake pipeline."""

    channel: str  # web | api | wechat | telegram | voice | open311
    sender: str  # the channel's own id of the citizen: openid, chat id, caller number, "web"
    text: str
    received_at: float = field(default_factory=time.time)
    contact: str = ""  # phone number given by the citizen or the PBX
    name: str = ""
    address: str = ""
    location: Location | None = None
    audio_ref: str = ""
    transcript: str = ""
    attachments: list[str] = field(default_factory=list)
    idempotency_key: str = ""  # Idempotency-Key header, WeChat MsgId, Telegram update_id …
    meta: dict[str, Any] = field(default_factory=dict)
    taken_by: str = ""  # the call-taker who typed the complaint in during the call (人工受理)
    confidential: bool = False  # 保密: the citizen's identity is kept from the handling units
    # The call-taker's urgency (人工受理): emergency / urgent / normal; "" leaves it to intake's urgency rules.
    urgency: str = ""
    # What ``idempotency_key`` reused with other content means. "refuse": a client's request id (API,
    # Open311, console), answered 422 as Stripe does, since returning the first case would drop the second
    # complaint and hand out another citizen's case number. "new": the web form's per-page token, which the
    # browser's Back button sends again with whatever the citizen typed next, so that is a new complaint.
    key_reuse: Literal["refuse", "new"] = "refuse"


@dataclass
class Report:
    """A citizen's report folded into an existing case (a merged repeat)."""

    report_id: str
    channel: str
    sender: str
    contact: str
    text: str
    received_at: float
    score: float = 0.0
    merged_by: str = "auto"


@dataclass
class Case:
    id: str
    channel: str
    sender: str
    status: Status
    created_at: float
    updated_at: float
    text: str
    normalized_text: str
    contact: str = ""
    name: str = ""
    address: str = ""
    location: Location | None = None
    audio_ref: str = ""
    transcript: str = ""
    attachments: list[str] = field(default_factory=list)
    # What the classifier proposed: per head the top 3 with probabilities, plus flags.
    suggestion: dict[str, Any] = field(default_factory=dict)
    # What a call-taker (or the auto-confirm policy) decided: category, department, co_departments,
    # street, type, urgency.
    classification: dict[str, Any] = field(default_factory=dict)
    needs_confirmation: bool = True
    emergency: bool = False
    priority: int = 0
    duplicate_of: str = ""
    duplicate_candidates: list[dict[str, Any]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    dispatch: dict[str, Any] = field(default_factory=dict)
    deadline_at: float = 0.0
    survey: dict[str, Any] = field(default_factory=dict)
    answer: dict[str, Any] = field(default_factory=dict)
    # 保密: the citizen asked that the handling units not learn who they are. The hotline keeps the contact
    # for its own callbacks; work orders carry neither name, number nor recording.
    confidential: bool = False

    @property
    def reporter_count(self) -> int:
        return 1 + len(self.reports)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values. Nested dicts and lists are the case's own (not copies): the record is
        written on every change of a case, and a deep copy of a merged case's reports cost milliseconds."""
        data = dict(self.__dict__)
        data["status"] = str(self.status)
        data["location"] = dataclasses.asdict(self.location) if self.location is not None else None
        data["reports"] = [dict(r.__dict__) for r in self.reports]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        loc = values.get("location")
        values["location"] = Location(**loc) if isinstance(loc, dict) else None
        values["reports"] = [Report(**r) for r in values.get("reports") or []]
        return cls(**values)

    def public_view(self) -> dict[str, Any]:
        """What may leave the building: contacts masked, internals left out."""
        data = self.to_dict()
        data["contact"] = mask_phone(self.contact)
        data["name"] = mask_name(self.name)
        data["sender"] = ""
        data["reporter_count"] = self.reporter_count
        data["reports"] = [
            {"report_id": r.report_id, "channel": r.channel, "received_at": r.received_at}
            for r in self.reports
        ]
        return data


_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[\dXx])(?![0-9A-Za-z])")


def mask_phone(phone: str) -> str:
    """138****1234 for mobiles; other numbers keep only their last 4 digits."""
    digits = digits_of(phone)
    if not digits:
        return ""
    if len(digits) == 11 and digits.startswith("1"):
        return f"{digits[:3]}****{digits[-4:]}"
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_name(name: str) -> str:
    if not name:
        return ""
    return name[0] + "*" * (len(name) - 1)


def mask_pii(text: str) -> str:
    """Mask mobile and ID-card numbers inside free text (for logs and pages that do not need them)."""
    text = _ID_CARD.sub(lambda m: f"{m.group(1)}********{m.group(3)[-1]}", text)
    return _PHONE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


def last4(phone: str) -> str:
    """Always ASCII: cases stored before contacts were normalised may hold full-width digits."""
    return digits_of(phone)[-4:]
