"""Pure parts of dispatch: working-day deadlines, time-limit classes, signatures, tables, work orders,
event parsing — and the `hotline dispatch` command against the real store."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hotline.dispatch.deadlines import WorkCalendar, limit_for
from hotline.dispatch.events import parse_event
from hotline.dispatch.service import DispatchError, validate_classification
from hotline.dispatch.signing import SignatureError, sign_headers, verify
from hotline.dispatch.tables import TimeLimit, load_tables
from hotline.dispatch.workorder import build_work_order
from hotline.records import Case, Location, Report
from hotline.settings import PROJECT_ROOT, SettingsError
from hotline.status import Status

TZ = ZoneInfo("Asia/Shanghai")
TABLES = load_tables(PROJECT_ROOT / "config" / "dispatch.toml", PROJECT_ROOT / "config" / "category_departments.toml")
CAL = WorkCalendar.from_tables(TABLES, "Asia/Shanghai")
ONE_DAY = TimeLimit("c", 1, "working_days")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=TZ).timestamp()


def local(t: float) -> str:
    return datetime.fromtimestamp(t, TZ).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize(("start", "due"), [
    ("2026-03-10 14:30", "2026-03-11 14:30"),  # Tuesday → Wednesday
    ("2026-03-13 16:00", "2026-03-16 16:00"),  # Friday → Monday
    ("2026-03-14 11:00", "2026-03-17 09:00"),  # Saturday: clock starts Monday 09:00
    ("2026-09-30 10:00", "2026-10-08 10:00"),  # before National Day: the week off is skipped
    ("2026-10-09 10:00", "2026-10-10 10:00"),  # Friday → Saturday 10 Oct, a make-up working day (调休)
    ("2026-10-03 10:00", "2026-10-09 09:00"),  # inside the holiday: from the 8th 09:00, due the 9th
])
def test_working_day_deadlines(start: str, due: str) -> None:
    assert local(CAL.deadline(ts(start), ONE_DAY)) == due


def test_calendar_says_which_coming_year_has_no_holidays() -> None:
    # The shipped table holds 2026: 2027 is reported from warn_days_ahead (45) days before it starts.
    assert CAL.warn_days == 45
    assert CAL.missing_years(ts("2026-06-01 12:00")) == []
    assert CAL.missing_years(ts("2026-11-16 12:00")) == []
    assert CAL.missing_years(ts("2026-11-18 12:00")) == [2027]
    assert CAL.missing_years(ts("2027-03-01 12:00")) == [2027]
    assert CAL.missing_years(ts("2026-12-31 12:00"), 0) == []
    assert CAL.missing_years(ts("2025-12-01 12:00"), 400) == [2025, 2027]
    with_2027 = WorkCalendar(TZ, CAL.holidays | {date(2027, 1, 1)})
    assert with_2027.missing_years(ts("2026-12-20 12:00")) == []


def test_hour_and_day_limits() -> None:
    start = ts("2026-03-14 23:00")
    assert CAL.deadline(start, TABLES.limit("urgent")) == start + 2 * 3600  # urgent work has no weekends
    assert CAL.deadline(start, TABLES.limit("utilities")) == start + 3 * 3600
    assert CAL.deadline(start, TABLES.limit("default")) == start + 15 * 86400


def _case(**kw: object) -> Case:
    base = dict(id="20260314-000001", channel="api", sender="s", status=Status.CLASSIFIED, created_at=1.0,
                updated_at=1.0, text="t", normalized_text="t")
    base.update(kw)
    return Case(**base)  # type: ignore[arg-type]


def test_time_limit_class_selection() -> None:
    plain = _case()
    gas = ["城乡建设", "城市建设和市政管理", "燃气供应"]
    assert limit_for(TABLES, plain, {"type": "投诉"}, gas).name == "utilities"
    assert limit_for(TABLES, plain, {"type": "咨询"}, ["教育文体"]).name == "consultation"
    assert limit_for(TABLES, plain, {"type": "投诉"}, ["教育文体"]).name == "default"
    assert limit_for(TABLES, _case(emergency=True), {}, ["教育文体"]).name == "urgent"
    flagged = _case(priority=1, suggestion={"urgency": {"level": "urgent"}})
    assert limit_for(TABLES, flagged, {}, ["教育文体"]).name == "urgent"
    # The call-taker's judgement wins over intake's keyword flag.
    assert limit_for(TABLES, flagged, {"urgency": "normal"}, ["教育文体"]).name == "default"


def test_signatures() -> None:
    body = b'{"a": 1}'
    now = time.time()
    headers = sign_headers("s3", body, now)
    verify("s3", headers, body, 300, now=now + 100)
    for secret, h, b, at, code in [
        ("s3", {}, body, now, "unsigned"),
        ("s3", headers, body + b" ", now, "bad_signature"),
        ("other", headers, body, now, "bad_signature"),
        ("s3", headers, body, now + 301, "stale"),
        ("s3", {**headers, "X-Hotline-Timestamp": "12ab"}, body, now, "bad_timestamp"),
        ("", headers, body, now, "events_disabled"),
    ]:
        with pytest.raises(SignatureError) as exc:
            verify(secret, h, b, 300, now=at)
        assert exc.value.code == code


def test_tables_refuse_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "d.toml"
    for text, word in [
        ('[time_limits.default]\namount = 1\nunit = "weeks"\n', "unit"),
        ('[time_limits.default]\namount = -1\nunit = "days"\n', "amount"),
        ('[time_limits.default]\namount = 1.5\nunit = "working_days"\n', "whole"),
        ('[time_limits.default]\namount = 1\nunit = "days"\n', "urgent"),
        ('[time_limits.default]\namount = 1\nunit = "days"\n[time_limits.urgent]\namount = 2\nunit = "hours"\n'
         '[category_limits]\n"x" = "nope"\n', "nope"),
        ('[time_limits.default]\namount = 1\nunit = "days"\n[time_limits.urgent]\namount = 2\nunit = "hours"\n'
         '[calendar]\nholidays = ["2026-13-01"]\n', "date"),
        ('[time_limits.default]\namount = 1\nunit = "days"\n[time_limits.urgent]\namount = 2\nunit = "hours"\n'
         '[calendar]\nwarn_days_ahead = -3\n', "warn_days_ahead"),
        ('[time_limits.default]\namount = 1\nunit = "days"\n[time_limits.urgent]\namount = 2\nunit = "hours"\n'
         '[calendar]\nwarn_days_ahead = "soon"\n', "warn_days_ahead"),
    ]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SettingsError, match=word):
            load_tables(bad)


def test_street_hints_and_lookup() -> None:
    assert TABLES.street_for("A3区中山路", "") == "A3区人民政府"
    assert TABLES.street_for("", "我住在A5区") == "A5区人民政府"
    assert TABLES.street_for("某地", "没有") == ""
    assert TABLES.lookup(TABLES.departments, ["城乡建设", "城市建设和市政管理", "自来水供应"]) == "自来水公司"
    assert TABLES.lookup(TABLES.departments, ["城乡建设", "未知"]) == "城乡建设局"  # from the classifier's table


def test_work_order_carries_everything() -> None:
    case = _case(address="A3区建设路5号", location=Location(28.1, 112.9, "建设路"), contact="13800001111", name="李四",
                 attachments=["att-1"], audio_ref="audio/1.wav", deadline_at=ts("2026-03-16 16:00"),
                 reports=[Report("r1", "web", "x", "", "同样问题", 2.0)],
                 classification={"category": "违章建筑", "category_path": ["城乡建设", "城乡规划", "违章建筑"],
                                 "department": "城管局", "co_departments": ["规划局"], "street": "A3区人民政府",
                                 "type": "投诉", "urgency": "normal"},
                 dispatch={"round": 2, "order_id": "20260314-000001-R2", "redo": True, "redo_reason": "未解决",
                           "time_limit": "default", "returns": [{"department": "园林局", "reason": "非本单位"}]})
    order = build_work_order(case, TZ)
    assert order["order_id"] == "20260314-000001-R2" and order["redo"] and order["dual_dispatch"]
    assert order["recipients"] == ["城管局", "规划局", "A3区人民政府"]
    assert order["reporters"] == 2 and order["attachments"] == ["att-1", "audio/1.wav"]
    assert order["deadline"] == "2026-03-16T16:00:00+08:00"
    assert order["citizen"] == {"name": "李四", "contact": "13800001111"}
    assert order["previous_returns"] == [{"department": "园林局", "reason": "非本单位"}]
    assert order["confidential"] is False and order["description"] == case.text


def test_confidential_work_order_does_not_say_who_complained() -> None:
    """保密: the unit gets the problem, not the person; the hotline keeps the number for its callbacks."""
    case = _case(contact="13800001111", name="李四", attachments=["att-1"], audio_ref="audio/1.wav",
                 text="邻居王某（电话13912345678）在楼道私拉电线，我是302的李四", transcript="电话13912345678",
                 confidential=True, classification={"category": "城乡建设", "department": "城管局"},
                 dispatch={"round": 1, "order_id": "20260314-000001-R1", "time_limit": "default"})
    order = build_work_order(case, TZ)
    assert order["confidential"] is True and order["citizen"] == {"name": "", "contact": ""}
    assert order["attachments"] == ["att-1"]  # photos of the problem go; the caller's voice does not
    assert "13912345678" not in json.dumps(order, ensure_ascii=False)
    assert "13800001111" not in json.dumps(order, ensure_ascii=False)
    assert "私拉电线" in order["description"]
    assert case.contact == "13800001111"


def test_classification_validation() -> None:
    ok = validate_classification({"category": " 城乡建设 ", "co_departments": ["a", "a", "b"], "urgency": "urgent"})
    assert ok["category"] == "城乡建设" and ok["co_departments"] == ["a", "b"]
    for bad in (None, [], {"category": ""}, {"category": 5}, {"category": "x", "co_departments": "a"},
                {"category": "x", "urgency": "very"}, {"category": "x" * 101},
                {"category": "x", "co_departments": ["a"] * 11}):
        with pytest.raises(DispatchError):
            validate_classification(bad)


def test_event_parsing() -> None:
    ev = parse_event({"event_id": "e", "case_id": "20260314-000001", "type": "extension_requested",
                      "extension_hours": 24, "reason": "协调", "seq": 3})
    assert ev.extension_hours == 24 and ev.seq == 3
    for bad in ({"event_id": "e", "case_id": "20260314-000001", "type": "accepted", "seq": 1.5},
                {"event_id": "e", "case_id": "20260314-000001", "type": "accepted", "occurred_at": "now"},
                {"event_id": "e", "case_id": "20260314-000001", "type": "accepted", "seq": True},
                {"event_id": "e" * 201, "case_id": "20260314-000001", "type": "accepted"},
                {"event_id": "e", "case_id": "20260314-000001", "type": "resolved", "reply": "   "}):
        with pytest.raises(DispatchError):
            parse_event(bad)


def test_cli_dead_and_redrive(redis_server, tmp_path: Path, key_prefix: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from hotline.cli import main
    from hotline.dispatch.feature import build_dispatcher
    from hotline.notify import Notifications
    from hotline.store import Store
    from hotline.store.outbox import OutboxEntry
    from tests.conftest import make_settings

    settings = make_settings(redis_server.url, tmp_path, key_prefix)

    async def seed() -> str:
        store = Store.from_url(redis_server.url, prefix=key_prefix)
        try:
            outbox = build_dispatcher(settings, store, Notifications(store)).outbox
            await outbox.ensure_group()
            entry_id, _ = await outbox.enqueue("20260314-000009-R1", "20260314-000009", {"order_id": "x"})
            await outbox.read_new("c1", 10, 1)
            entry = OutboxEntry(entry_id, "20260314-000009-R1", "20260314-000009", '{"order_id": "x"}')
            return await outbox.bury(entry, 8, "HTTP 503: down")
        finally:
            await store.close()

    dead_id = asyncio.run(seed())
    monkeypatch.setenv("HOTLINE_STORE__REDIS_URL", redis_server.url)
    monkeypatch.setenv("HOTLINE_STORE__KEY_PREFIX", key_prefix)
    assert main(["dispatch", "dead", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert dead_id in out and "20260314-000009-R1" in out and "HTTP 503" in out
    assert re.search(r"\t\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0800\t", out), out  # the city's time, marked
    assert main(["dispatch", "redrive", "1-1", "--data-dir", str(tmp_path)]) == 1
    assert main(["dispatch", "redrive", dead_id, "--data-dir", str(tmp_path)]) == 0
    assert "redriven" in capsys.readouterr().out
    assert main(["dispatch", "dead", "--data-dir", str(tmp_path)]) == 0
    assert "no dead letters" in capsys.readouterr().out
    assert main(["dispatch", "stats", "--data-dir", str(tmp_path)]) == 0
    assert '"outbox": 1' in capsys.readouterr().out
