"""What a citizen is told about their case's progress, the same on the web status page and in chat.

Beijing's 接诉即办 tells the caller which unit handles the case, by when, and what the unit answered; the
staff-only parts (AI suggestions, audit data, other reporters) never appear here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotline.records import Case, mask_pii
from hotline.status import Status

# Events a citizen may see, with their wording; all others (AI review, phone viewed …) stay internal.
PUBLIC_EVENTS = {
    "received": "诉求已受理",
    "classified": "已登记分类",
    "confirmed": "已立案",
    "dispatched": "已派遣至承办单位",
    "accepted": "承办单位已接单",
    "in_progress": "承办单位处理中",
    "returned": "重新派遣中",
    "extension_approved": "承办单位申请延期，已同意，办理时限延长",
    "resolved": "已办理完毕",
    "closed": "已办结",
    "reopened": "重新办理",
    "merged": "已并入相同诉求案件",
    "report_merged": "其他市民反映了相同问题",
    "survey_answered": "已完成回访评价",
    "answered": "已直接答复",
    "answer_resolved": "市民确认答复已解决问题",
    "answer_not_resolved": "答复未解决问题，已转为人工办理",
}

# The handling unit is named once the order has gone out; a returned order (退单) is being re-routed.
_UNIT_SHOWN = frozenset({Status.DISPATCHED, Status.IN_PROGRESS, Status.RESOLVED, Status.CLOSED})
# The time limit matters only while the unit is still working on it.
_DEADLINE_SHOWN = frozenset({Status.DISPATCHED, Status.IN_PROGRESS})
# The unit's reply stands once it reported the case handled; a reopened case awaits a new one.
_REPLY_SHOWN = frozenset({Status.RESOLVED, Status.CLOSED})
MAX_REPLY_CHARS = 2000


@dataclass(frozen=True)
class Progress:
    department: str = ""
    deadline_at: float = 0.0
    reply: str = ""


def citizen_progress(case: Case) -> Progress:
    dispatch = case.dispatch or {}
    department = ""
    if case.status in _UNIT_SHOWN and dispatch.get("order_id"):
        department = str((case.classification or {}).get("department") or "")[:100]
    deadline = case.deadline_at if case.status in _DEADLINE_SHOWN and case.deadline_at > 0 else 0.0
    reply = ""
    if case.status in _REPLY_SHOWN:
        reply = mask_pii(str(dispatch.get("reply") or ""))[:MAX_REPLY_CHARS]
    return Progress(department=department, deadline_at=deadline, reply=reply)
