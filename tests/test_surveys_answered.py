"""Contacts answered at intake (直接答复) are surveyed like resolved cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import INTAKE, STORE, SURVEYS
from hotline.records import InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.surveys import FOLLOWUP, MAIN
from tests.conftest import make_settings


async def answered_case(client: TestClient) -> str:
    result = await client.app[INTAKE].submit(InboundMessage(
        channel="web", sender="13700001111", contact="13700001111", text="请问新生儿医保怎么办理？需要带什么材料"))
    case_id = result.case.id
    await client.app[STORE].update_case(case_id, lambda c: {"entry": "kb-1"}, actor="staff:li", action="answered",
                                        target=Status.ANSWERED)
    return case_id


async def make_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, prefix: str) -> TestClient:
    callbacks = {"delay_s": 0, "hours_start": 0, "hours_end": 24, "poll_s": 3600.0}
    settings = make_settings(redis_server.url, tmp_path, prefix, callbacks=callbacks, dedup={"enabled": False})
    return await aiohttp_client(create_app(settings))


async def test_unhelpful_direct_answer_becomes_a_case_for_the_call_takers(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix)
    service, store = client.app[SURVEYS], client.app[STORE]
    case_id = await answered_case(client)
    assert await service.schedule(await store.get_case(case_id)) is True
    assert await service.schedule(await store.get_case(case_id)) is False  # one round per answer
    await service.run_due()
    survey = await service.surveys.get(case_id)
    assert survey is not None and survey.recipients[MAIN].state == FOLLOWUP  # web contact: an agent calls
    text = await service.answer(case_id, MAIN, resolved=False, satisfaction="unsatisfied", comment="没说清楚材料",
                                actor="staff:zhao")
    assert "转为工单" in text
    case = await store.get_case(case_id)
    assert case.status == Status.CLASSIFIED
    assert case_id in await store.confirm_queue()
    assert case.survey["resolved"] is False and case.survey["comment"] == "没说清楚材料"


async def test_helpful_direct_answer_closes_the_contact(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix)
    service, store = client.app[SURVEYS], client.app[STORE]
    case_id = await answered_case(client)
    assert await service.schedule(await store.get_case(case_id)) is True
    await service.answer(case_id, MAIN, resolved=True, satisfaction="satisfied", comment="", actor="web:citizen")
    case = await store.get_case(case_id)
    assert case.status == Status.CLOSED
    assert [e.action for e in await store.events(case_id)][-2:] == ["survey_answered", "closed"]


async def test_a_round_for_a_contact_that_became_a_case_meanwhile_asks_nothing(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix)
    service, store = client.app[SURVEYS], client.app[STORE]
    case_id = await answered_case(client)
    assert await service.schedule(await store.get_case(case_id)) is True
    await store.update_case(case_id, lambda c: {"reason": "否"}, actor="web:citizen", action="reopened",
                            target=Status.CLASSIFIED)
    await service.run_due()
    survey = await service.surveys.get(case_id)
    assert survey is not None and survey.recipients[MAIN].state != FOLLOWUP
    assert await service.worklist() == []
