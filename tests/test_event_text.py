"""The audit trail worded for staff: every action the code writes has a Chinese name, data reads as text."""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo

from hotline.console.event_text import ACTION_LABELS, MAX_DETAILS_CHARS, actor_label, describe
from hotline.console.views import event_view, match_reasons
from hotline.dispatch.service import EVENT_TYPES
from hotline.store import Event

BEIJING = ZoneInfo("Asia/Shanghai")

PACKAGE = Path(__file__).resolve().parent.parent / "hotline"
# Case audit actions as the code writes them: store calls name the actor first, helpers take (case, action).
STORE_CALL = re.compile(r'actor=[^,]+,\s*action="([a-z_]+)"')
HELPER_CALL = re.compile(r'(?:_case_event|self\._event|self\._audit)\([^,]+, "([a-z_]+)"')
INTAKE_EVENT = re.compile(r'\((?:f?"[^"]*"|[a-z_]+), "([a-z_]+)", \{')


def written_actions() -> set[str]:
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[:2] == ("store", "kb.py"):
            continue  # knowledge-base entries keep their own trail, shown on the KB page
        text = path.read_text(encoding="utf-8")
        for pattern in (STORE_CALL, HELPER_CALL, INTAKE_EVENT):
            found.update(pattern.findall(text))
    return found


def test_every_action_the_code_writes_has_a_staff_label() -> None:
    actions = written_actions() | set(EVENT_TYPES)
    assert {"received", "classified", "dispatched", "survey_call", "hotspot_raised", "voice_call"} <= actions
    assert sorted(actions - set(ACTION_LABELS)) == []


def test_details_read_as_words_not_json() -> None:
    text = describe({"order_id": "20261124-000001-r1", "round": 2, "department": "住建局",
                     "co_departments": ["城管局", "水务局"], "street": "", "time_limit": "urgent",
                     "deadline_at": 1795495568.0, "redo": True}, BEIJING)
    assert text == ("工单号：20261124-000001-r1；派遣轮次：2；承办部门：住建局；协办部门：城管局、水务局；"
                    "办理时限：紧急；办理期限：2026-11-24 12:46；重办：是")
    assert describe({"from": "classified", "to": "merged", "score": 0.91234, "merged_by": "auto"}, BEIJING) == (
        "原状态：已立案，待确认；新状态：已并入相同诉求案件；相似度：0.91；合并方式：系统自动")
    nested = describe({"classification": {"category": "城乡建设", "department": "住建局"}}, BEIJING)
    assert nested == "确认结果（类别：城乡建设，承办部门：住建局）"
    # A key without wording still shows, under its own name: nothing in the trail is hidden.
    assert describe({"new_field": "x"}, BEIJING) == "new_field：x"
    assert describe({}, BEIJING) == "" and describe({"ref": "", "co_departments": []}, BEIJING) == ""


def test_hostile_event_data_gives_bounded_text() -> None:
    deep: dict = {"a": "x"}
    for _ in range(50):
        deep = {"k": deep}
    assert len(describe(deep, BEIJING)) <= MAX_DETAILS_CHARS + 1
    huge = describe({"reply": "很长的答复" * 1000, "list": list(range(10_000))}, BEIJING)
    assert len(huge) <= MAX_DETAILS_CHARS + 1 and "很长的答复…" in huge and huge.endswith("9 等 10000 项")
    assert describe({"deadline_at": -5, "received_at": "not a time", "duration_s": "?"}, BEIJING)


def test_event_view_masks_numbers_in_details_and_keeps_raw_data() -> None:
    ev = Event(id="1-0", ts=1795488368.0, actor="staff:fu1", action="callback_call",
               data={"outcome": "call_back_later", "note": "市民说改打13912345678"})
    view = event_view(ev, BEIJING)
    assert view["action_label"] == "人工回访电话" and view["actor_label"] == "fu1（工作人员）"
    assert "结果：稍后回拨" in view["details"] and "13912345678" not in view["details"]
    assert "13912345678" not in view["data"] and '"outcome"' in view["data"]


def test_actors_and_match_reasons_are_worded() -> None:
    assert actor_label("voice:ivr") == "电话 IVR"
    assert actor_label("web:citizen") == "市民（网站）"
    assert actor_label("dispatch:open311") == "派单系统（open311）"
    assert actor_label("system") == "系统"
    assert match_reasons(["text 0.83", "same_place", "same_caller"]) == "文字相似度 0.83、同一地点、同一来电人"
    assert match_reasons(None) == "" and match_reasons(["odd"]) == "odd"
