"""回访 answers racing another change of the same case: a merged reporter's answer against the undo of its
merge (撤销合并), and two reporters' answers at the same moment. Each competing change is made at one exact
point of the answer (just before one of its case writes), so every interleaving is tested as it happens."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DEDUP, STORE, SURVEYS
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store import Store
from hotline.store.surveys import ANSWERED, FOLLOWUP, MAIN, WITHDRAWN
from hotline.surveys import SUPERSEDED
from tests.console_support import staff_login
from tests.dispatch_support import Open311Receiver, wait_for
from tests.test_callbacks_e2e import callback_settings
from tests.test_callbacks_fixes import answer, link_token, merged_and_surveyed


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    # Surveys due at once, the tests drive run_due; with merging on.
    settings = callback_settings(redis_server, tmp_path, key_prefix, receiver.url, merging=True)
    return await aiohttp_client(create_app(settings))


def around_write(monkeypatch: pytest.MonkeyPatch, store: Store, action: str,
                 competing: Callable[[], Awaitable[Any]], *, after: bool = False) -> list[Any]:
    """Run ``competing`` to its end once, just before (``after``: just after) the first case write of
    ``action`` reaches the store; the writes of ``competing`` itself go through unchanged. Returns what
    ``competing`` returned, once it ran."""
    original = store.update_case
    ran: list[Any] = []
    started: list[bool] = []

    async def update_case(case_id: str, mutate: Any, **kwargs: Any) -> Any:
        if started or kwargs.get("action") != action:
            return await original(case_id, mutate, **kwargs)
        started.append(True)
        if not after:
            ran.append(await competing())
        case = await original(case_id, mutate, **kwargs)
        if after:
            ran.append(await competing())
        return case

    monkeypatch.setattr(store, "update_case", update_case)
    return ran


def actions(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.action, e.data.get("report_id", "")) for e in events]


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [(r.name, r.getMessage(), r.exc_text) for r in bad]


# A former reporter's answer against the undo of its merge -------------------------------------------------

async def test_answer_written_after_the_undo_of_its_merge_is_refused(app_client: TestClient,
                                                                     receiver: Open311Receiver,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    client, store, service = app_client, app_client.app[STORE], app_client.app[SURVEYS]
    case_id, d = await merged_and_surveyed(client, receiver)
    # The agent opened the card while d still belonged to the case; the undo lands before the answer is written.
    undone = around_write(monkeypatch, store, "survey_answered",
                          lambda: client.app[DEDUP].unmerge(d, "staff:ct1"))
    async with staff_login(client, "follow_up") as agent:
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{d}", answer(False, "unsatisfied", "不行"))
        assert undone, "the undo did not run"
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["error"]["code"] == "not_a_reporter"
        # The case's own reporter is still to be asked.
        items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert {i["rid"] for i in items if i["case_id"] == case_id} == {MAIN}
    case = await store.get_case(case_id)
    assert case.status == Status.RESOLVED and d not in case.survey.get("reports", {})
    trail = actions(await store.events(case_id))
    assert ("survey_answered", d) not in trail and not any(a == "reopened" for a, _ in trail)
    assert trail[-1] == ("survey_withdrawn", d)
    assert receiver.orders_per_case()[case_id] == 1  # no re-handling order
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert (survey.recipients[MAIN].state, survey.recipients[d].state) == (FOLLOWUP, WITHDRAWN)
    assert survey.recipients[d].satisfaction == "" and survey.recipients[d].answered_at == 0.0
    # The report is its own case again, waiting for a call-taker.
    assert (await store.get_case(d)).status == Status.CLASSIFIED


async def test_undo_between_the_answer_and_the_reopening_leaves_the_case_alone(
        app_client: TestClient, receiver: Open311Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    client, store, service = app_client, app_client.app[STORE], app_client.app[SURVEYS]
    case_id, d = await merged_and_surveyed(client, receiver)
    # The answer is written while d is still a reporter; the undo lands right after.
    undone = around_write(monkeypatch, store, "survey_answered", lambda: client.app[DEDUP].unmerge(d, "staff:ct1"),
                          after=True)
    async with staff_login(client, "follow_up") as agent:
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{d}", answer(False, "unsatisfied", "不行"))
        assert undone, "the undo did not run"
        # Given while d was a reporter: the answer stays, but it no longer decides for this case.
        assert resp.status == 200, await resp.text()
        assert "重新办理" not in (await resp.json())["message"]
        items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert {i["rid"] for i in items if i["case_id"] == case_id} == {MAIN}
    case = await store.get_case(case_id)
    assert case.status == Status.RESOLVED
    trail = actions(await store.events(case_id))
    assert trail.index(("survey_answered", d)) < trail.index(("unmerged", d))
    assert not any(a in ("reopened", "survey_withdrawn") for a, _ in trail)
    assert receiver.orders_per_case()[case_id] == 1
    survey = await service.surveys.get(case_id)
    assert survey is not None
    # The case's own reporter keeps their evaluation to give.
    assert (survey.recipients[MAIN].state, survey.recipients[d].state) == (FOLLOWUP, ANSWERED)


# Two reporters' answers at the same moment ------------------------------------------------------------------

async def test_two_unhappy_answers_at_once_reopen_the_case_once(app_client: TestClient, receiver: Open311Receiver,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    client, store, service = app_client, app_client.app[STORE], app_client.app[SURVEYS]
    case_id, d = await merged_and_surveyed(client, receiver)
    async with staff_login(client, "follow_up") as agent, staff_login(client, "follow_up") as other:
        # Both answers are written to the case; the merged reporter's 不满意 reopens it before the owner's
        # 未解决 would.
        first = around_write(monkeypatch, store, "survey_answered", lambda: other.post_json(
            f"/api/v1/callbacks/{case_id}/{d}", answer(True, "unsatisfied", "态度差")), after=True)
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{MAIN}", answer(False, "unsatisfied", "没修好"))
        assert first and first[0].status == 200, await first[0].text()
        # Recorded, and the case is being handled again (by the other answer): what this citizen asked for.
        assert resp.status == 200, await resp.text()
        assert "重新办理" in (await resp.json())["message"]
    no_errors(caplog)
    await wait_for(lambda: any(a.key == f"{case_id}-R2" for a in receiver.orders))
    case = await store.get_case(case_id)
    assert case.survey["resolved"] is False and case.survey["reports"][d]["satisfaction"] == "unsatisfied"
    trail = actions(await store.events(case_id))
    assert [a for a, _ in trail].count("reopened") == 1
    assert [a for a, _ in trail].count("survey_answered") == 2
    assert receiver.orders_per_case()[case_id] == 2
    survey = await service.surveys.get(case_id)
    assert survey is not None and {r.state for r in survey.recipients.values()} == {ANSWERED}


async def test_answer_written_after_another_reopened_the_case_gets_409(
        app_client: TestClient, receiver: Open311Receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    client, store, service = app_client, app_client.app[STORE], app_client.app[SURVEYS]
    case_id, d = await merged_and_surveyed(client, receiver)
    async with staff_login(client, "follow_up") as agent, staff_login(client, "follow_up") as other:
        # Both cards passed their checks; the merged reporter's 不满意 reopens the case before the owner's
        # answer reaches the case.
        first = around_write(monkeypatch, store, "survey_answered", lambda: other.post_json(
            f"/api/v1/callbacks/{case_id}/{d}", answer(False, "unsatisfied", "没修好")))
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{MAIN}", answer(False, "unsatisfied", "还是堵"))
        assert first and first[0].status == 200, await first[0].text()
        assert resp.status == 409, await resp.text()
        assert (await resp.json())["error"]["code"] == "case_reopened"
    no_errors(caplog)
    await wait_for(lambda: any(a.key == f"{case_id}-R2" for a in receiver.orders))
    case = await store.get_case(case_id)
    # Nothing recorded against the case as it is handled again; the owner is asked after the next resolution.
    assert "resolved" not in case.survey and case.survey["reports"][d]["resolved"] is False
    trail = actions(await store.events(case_id))
    assert ("survey_answered", "") not in trail and [a for a, _ in trail].count("reopened") == 1
    assert trail.index(("survey_withdrawn", "")) > trail.index(("reopened", ""))
    assert receiver.orders_per_case()[case_id] == 2
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert (survey.recipients[MAIN].state, survey.recipients[d].state) == (SUPERSEDED, ANSWERED)
    assert survey.recipients[MAIN].satisfaction == "" and survey.recipients[MAIN].answered_by == ""


async def test_owners_satisfied_link_answer_and_a_reporters_unhappy_one_at_once(
        app_client: TestClient, receiver: Open311Receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    client, store = app_client, app_client.app[STORE]
    case_id, d = await merged_and_surveyed(client, receiver)
    token = await link_token(client, case_id)
    async with staff_login(client, "follow_up") as agent:
        # The citizen's 满意 on the signed web link would close the case; an agent records the merged
        # reporter's 不满意 just before, and the case is reopened instead.
        first = around_write(monkeypatch, store, "closed", lambda: agent.post_json(
            f"/api/v1/callbacks/{case_id}/{d}", answer(False, "unsatisfied", "没修好")))
        page = await client.post(f"/survey/{token}", data={"resolved": "yes", "satisfaction": "satisfied"})
        assert first and first[0].status == 200, await first[0].text()
        assert page.status == 200 and "感谢您的评价" in await page.text()
    no_errors(caplog)
    await wait_for(lambda: any(a.key == f"{case_id}-R2" for a in receiver.orders))
    case = await store.get_case(case_id)
    assert case.status != Status.CLOSED
    assert (case.survey["resolved"], case.survey["satisfaction"]) == (True, "satisfied")
    trail = [a for a, _ in actions(await store.events(case_id))]
    assert trail.count("reopened") == 1 and "closed" not in trail
    assert receiver.orders_per_case()[case_id] == 2
