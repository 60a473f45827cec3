"""Case numbers: a repeat spends no number, also when the copies arrive at the same moment.

The day's sequence runs without gaps through parallel retries of one request (one Idempotency-Key) and
through a citizen's double tap (same words, same place, no key): the request that creates the case spends
the one number, the others get that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.appkeys import INTAKE, STORE
from hotline.intake import IntakeError
from hotline.records import InboundMessage
from hotline.store import Store
from tests.test_api import post


def number(case_id: str) -> int:
    return int(case_id.split("-")[1])


async def seq_used(store: Store) -> int:
    """Numbers the day's sequence has handed out (all of today's keys: a test never spans midnight)."""
    total = 0
    for key in await store.r.keys(f"{store.p}:seq:*"):
        total += int(await store.r.get(key) or 0)
    return total


def hold_writes(monkeypatch: pytest.MonkeyPatch, store: Store, copies: int) -> None:
    """Each case write waits (up to 5 s) until ``copies`` requests have come to theirs: every copy has got
    its number, or been told of the first one's, before any case is written. That is the moment a client's
    retries of a slow request arrive in."""
    arrived: list[object] = []
    everyone = asyncio.Event()
    create = store.create_case

    async def held(*args: Any, **kwargs: Any) -> Any:
        arrived.append(args)
        if len(arrived) >= copies:
            everyone.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), 5.0)
        return await create(*args, **kwargs)

    monkeypatch.setattr(store, "create_case", held)


async def test_parallel_retries_of_one_request_spend_one_number(client: TestClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app[STORE]
    hold_writes(monkeypatch, store, 20)
    body: dict[str, Any] = {"text": "幸福小区3栋门口路灯坏了一周，晚上很黑", "address": "幸福小区3栋",
                            "contact": "13812345678", "channel": "web"}
    answers = await asyncio.gather(*(post(client, body, {"Idempotency-Key": "retry-1"}) for _ in range(20)))
    assert sorted(s for s, _b in answers).count(201) == 1 and {s for s, _b in answers} <= {200, 201}, answers
    ids = {b["case_id"] for _s, b in answers}
    assert len(ids) == 1 and await store.count() == 1
    (first,) = ids
    # A fresh store: the one case has the day's first number, and no other number was handed out.
    assert number(first) == 1 and await seq_used(store) == 1
    # The next new complaint gets the very next number: the 19 repeats took none.
    status, nxt = await post(client, {"text": "和平路井盖松动，车辆经过响声很大", "contact": "13900001111"})
    assert status == 201 and number(nxt["case_id"]) == number(first) + 1


async def test_a_double_tap_without_a_key_spends_one_number(client: TestClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app[STORE]
    hold_writes(monkeypatch, store, 5)
    body = {"text": "人民公园东门的长椅坏了好几张", "address": "人民公园东门", "contact": "13612345678"}
    answers = await asyncio.gather(*(post(client, body) for _ in range(5)))
    assert len({b["case_id"] for _s, b in answers}) == 1 and sorted(s for s, _b in answers) == [200] * 4 + [201]
    assert number(answers[0][1]["case_id"]) == 1 and await seq_used(store) == 1
    status, nxt = await post(client, {"text": "青年路口的红绿灯不亮了", "contact": "13700002222"})
    assert status == 201 and number(nxt["case_id"]) == number(answers[0][1]["case_id"]) + 1
    assert await store.count() == 2 and await seq_used(store) == number(nxt["case_id"])


def keys_of(intake: Any, msg: InboundMessage) -> list[str]:
    """The idempotency keys ``Intake.submit`` claims for ``msg``."""
    cleaned = intake.cleaned(msg)
    text, norm = intake.validate(msg)
    draft = intake._draft(cleaned, text, norm, "", time.time())
    return [*intake._request_keys(cleaned, draft), *intake._resubmission_keys(cleaned, draft)]


async def test_a_number_taken_by_a_request_that_never_wrote_its_case_goes_to_the_retry(client: TestClient) -> None:
    """The request that took the number died (or Redis went away) before its case was written: its keys name
    a case that does not exist. The retry writes the case under that number, and is acknowledged only once
    the case exists."""
    store, intake = client.app[STORE], client.app[INTAKE]
    msg = InboundMessage(channel="api", sender="x", contact="13512345678", text="和平巷的健身器材坏了",
                         idempotency_key="lost-1", key_reuse="refuse")
    lost = await store.settle(store.claim(keys_of(intake, msg)))
    assert not lost.earlier
    retry = await intake.submit(msg)
    assert retry.created and retry.case.id == lost.case_id
    assert (await store.get_case(lost.case_id)).contact == "13512345678"
    again = await intake.submit(msg)
    assert not again.created and again.case.id == lost.case_id
    status, nxt = await post(client, {"text": "青年路口的红绿灯不亮了", "contact": "13700002222"})
    assert status == 201 and number(nxt["case_id"]) == number(lost.case_id) + 1
    # Other content under a request id whose number is still unwritten is refused, and nothing is written.
    first = InboundMessage(channel="api", sender="x", contact="13512345678", text="另一件事：井盖丢失",
                           idempotency_key="lost-2", key_reuse="refuse")
    await store.settle(store.claim(keys_of(intake, first)))
    reused = InboundMessage(channel="api", sender="x", contact="13512345678", text="完全不同的内容",
                            idempotency_key="lost-2", key_reuse="refuse")
    with pytest.raises(IntakeError) as refused:
        await intake.submit(reused)
    assert refused.value.code == "idempotency_key_reused"
    assert await store.count() == 2
