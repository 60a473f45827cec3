"""Defects found in QA of duplicates and hotspots: a phase number taken for a place, a hotspot that never
closed once its case had outlived the candidate index, and listings of closed hotspots that came back short."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hotline.app import create_app
from hotline.appkeys import DEDUP, HOTSPOTS, STORE
from hotline.dedup import DedupConfig, DedupService, load_idf
from hotline.hotspots import HotspotService
from hotline.nlp.places import place_cores, shared_places
from hotline.records import Case
from hotline.status import Status
from hotline.store.dedup import DedupIndex
from tests.conftest import make_settings
from tests.test_hotspots import _wait_for

# number-only place cores ------------------------------------------------------------------------

PROBLEM = "地下室配电房渗水，电缆泡在水里，物业不管，请尽快处理"


def test_two_estates_sharing_a_phase_number_share_no_place() -> None:
    a, b = f"竹韵小区3期48栋{PROBLEM}", f"玫瑰苑3期78栋{PROBLEM}"
    assert place_cores(a) == ["竹韵"] and place_cores(b) == ["玫瑰"]
    assert shared_places(place_cores(a), a, place_cores(b), b) == []


def test_a_number_with_or_without_units_is_never_a_place() -> None:
    numbers = ("3期", "三期", "第三期", "5号楼", "b座", "2单元", "七队", "五组", "二十栋", "2013年", "2000多",
               "15", "KTV")
    # Before each suffix the rules know, the number must not survive as the "name" of any of them.
    for number in numbers:
        for suffix in ("栋", "小区", "村", "店", "中学"):
            assert place_cores(f"投诉{number}{suffix}噪音扰民") == [], (number, suffix)


def test_a_bare_chinese_number_keeps_its_suffix() -> None:
    # 二十中学 and 十一中学 are two schools; a bare "二十" would be found in any text saying 二十多天.
    assert place_cores("二十中学门口交通拥堵") == ["二十中学"]
    assert place_cores("五四广场和八一路的路灯坏了") == ["五四广场", "八一路"]
    assert place_cores("第一医院停车难") == ["第一医院"]
    # 百, 千, 万 begin names as often as they count: 万年路 and 百户村 are places, 二百户 is a count.
    assert place_cores("反映：万年路的路灯坏了很久没人修") == ["万年"]
    assert place_cores("百户村的垃圾没人清运") == ["百户"]
    assert place_cores("投诉二百户村民饮水困难") == []
    # An estate's name still meets across its phases and buildings.
    assert place_cores("丽发新城二期小区3号楼停水") == ["丽发"]


@pytest.fixture
async def dd_client(aiohttp_client: Any, redis_server: Any, tmp_path: Path, key_prefix: str) -> Any:
    settings = make_settings(redis_server.url, tmp_path, key_prefix)
    return await aiohttp_client(create_app(settings))


async def _post(client: Any, text: str, contact: str, address: str = "") -> dict[str, Any]:
    body = {"text": text, "contact": contact, **({"address": address} if address else {})}
    resp = await client.post("/api/v1/complaints", json=body)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_another_estate_with_the_same_phase_number_is_not_merged(dd_client: Any) -> None:
    first = await _post(dd_client, f"竹韵小区3期48栋{PROBLEM}", "13900000001", "竹韵小区3期")
    other = await _post(dd_client, f"玫瑰苑3期78栋{PROBLEM}", "13900000002", "玫瑰苑3期")
    assert not other["merged_into"]
    # Another building of the first estate is the same problem there: still merged.
    same = await _post(dd_client, f"竹韵小区3期50栋{PROBLEM}", "13900000003", "竹韵小区3期")
    assert same["merged_into"] == first["case_id"]


# hotspots of cases the candidate index has pruned ------------------------------------------------

SIMILAR = [
    "阳光花园小区3栋楼下的烧烤店每天晚上油烟很大，噪音扰民到凌晨两点，请有关部门管一管。",
    "阳光花园小区3栋楼下烧烤店晚上油烟熏人，噪音吵得睡不着。",
    "阳光花园3栋楼下烧烤摊油烟和噪音严重扰民，晚上根本没法休息。",
    "阳光花园小区3栋楼下烧烤店油烟和噪音扰民，每天晚上吵到凌晨。",
]


async def _hotspot(client: Any, hid: str) -> dict[str, Any]:
    await client.app[HOTSPOTS].settled()
    resp = await client.get("/api/v1/hotspots?status=all&limit=200")
    assert resp.status == 200
    (found,) = [h for h in (await resp.json())["hotspots"] if h["id"] == hid]
    return found


async def _close(store: Any, case_id: str) -> None:
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED, Status.CLOSED):
        await store.update_case(case_id, lambda c: None, actor="t", action=str(target), target=target)


async def _raise(client: Any) -> tuple[list[str], dict[str, Any]]:
    ids = [(await _post(client, text, f"1380000090{i}"))["case_id"] for i, text in enumerate(SIMILAR[:3])]
    await client.app[HOTSPOTS].settled()
    (hot,) = (await (await client.get("/api/v1/hotspots")).json())["hotspots"]
    assert sorted(hot["open_case_ids"]) == sorted(ids)
    return ids, hot


async def test_a_hotspot_closes_when_its_cases_close_after_the_index_pruned_them(hs_client: Any) -> None:
    app = hs_client.app
    ids, hot = await _raise(hs_client)
    dedup = app[DEDUP]
    # The hourly prune, two months on: the cases are still open but out of the candidate index.
    assert await dedup.prune(time.time() + dedup.config.max_window_s + 60) == 3
    assert await dedup.index.size() == 0
    for cid in ids:
        await _close(app[STORE], cid)

    async def closed() -> bool:
        return (await _hotspot(hs_client, hot["id"]))["status"] == "closed"

    await _wait_for(closed)
    assert (await _hotspot(hs_client, hot["id"]))["open_case_ids"] == []
    assert "hotspot_closed" in [e.action for e in await app[STORE].events(ids[0])]


async def test_a_pruned_open_case_keeps_its_hotspot_open_when_others_join(hs_client: Any) -> None:
    app = hs_client.app
    store, dedup = app[STORE], app[DEDUP]
    ids, hot = await _raise(hs_client)
    first, second = await store.get_cases(ids[:2])
    # Prune at a moment when only the first case has outlived the longest window.
    assert await dedup.prune((first.created_at + second.created_at) / 2 + dedup.config.max_window_s) == 1
    joined = (await _post(hs_client, SIMILAR[3], "13800000909"))["case_id"]
    spot = await _hotspot(hs_client, hot["id"])
    assert sorted(spot["open_case_ids"]) == sorted([*ids, joined])
    # The pruned case is the last one still open: the hotspot waits for it.
    for cid in [*ids[1:], joined]:
        await _close(store, cid)

    async def only_first_left() -> bool:
        return (await _hotspot(hs_client, hot["id"]))["open_case_ids"] == [ids[0]]

    await _wait_for(only_first_left)
    assert (await _hotspot(hs_client, hot["id"]))["status"] == "open"
    await _close(store, ids[0])

    async def closed() -> bool:
        return (await _hotspot(hs_client, hot["id"]))["status"] == "closed"

    await _wait_for(closed)


def without_feed(store: Any, redis_url: str, tmp_path: Path, key_prefix: str,
                 day: str) -> tuple[HotspotService, DedupService, list[Case]]:
    """The dedup and hotspot services on the store with no change-feed worker (the test plays it), and three
    similar cases of ``day`` not yet stored."""
    settings = make_settings(redis_url, tmp_path, key_prefix, dedup={"hotspot_min_reporters": 3})
    config, idf = DedupConfig.from_settings(settings), load_idf(settings)
    hotspots = HotspotService(store, DedupIndex(store), idf, min_reporters=3, window_s=86400, similarity=0.3)
    now = time.time()
    cases = [Case(id=f"{day}-{i:06d}", channel="api", sender=f"api:{i}", status=Status.CLASSIFIED,
                  created_at=now - 10 + i, updated_at=now - 10 + i, text=text, normalized_text=text)
             for i, text in enumerate(SIMILAR[:3], 1)]
    return hotspots, DedupService(store, config, idf, hotspots=hotspots), cases


async def test_an_evaluation_that_finds_every_case_closed_closes_the_hotspot(
        redis_server: Any, tmp_path: Path, key_prefix: str, store: Any) -> None:
    # No feed worker here: the records close while the cases are still in the index, as when an evaluation
    # runs before the worker has seen the changes. The hotspot must not stay open with no open case.
    hotspots, dedup, cases = without_feed(store, redis_server.url, tmp_path, key_prefix, "20250301")
    for case in cases:
        assert (await store.create_case(case)).created
        await dedup.opened(case)
    (spots,) = await hotspots.hs.of_cases([cases[0].id])
    assert [h.status for h in spots] == ["open"]
    for case in cases:
        for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED):
            await store.update_case(case.id, lambda c: None, actor="t", action=str(target), target=target)
    seed = await dedup.index.get(cases[0].id)
    assert seed is not None
    spot = await hotspots.evaluate(seed)
    assert spot is not None and spot.status == "closed" and spot.open_case_ids == []
    assert (await hotspots.hs.get(spot.id)).status == "closed"


async def test_a_case_closing_while_its_hotspot_is_raised_is_not_left_open(
        redis_server: Any, tmp_path: Path, key_prefix: str, store: Any) -> None:
    # No feed worker: the test plays it, at the worst moment — after the evaluation read the cases as open,
    # before it saved the hotspot that makes them members.
    hotspots, dedup, cases = without_feed(store, redis_server.url, tmp_path, key_prefix, "20250302")
    save = hotspots.hs.save

    async def close_first_then_save(hs: Any, *, event: str) -> None:
        if event == "raised":
            for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED):
                await store.update_case(cases[0].id, lambda c: None, actor="t", action=str(target), target=target)
            await dedup.forget(cases[0].id)  # what the feed worker does on that change
        await save(hs, event=event)

    hotspots.hs.save = close_first_then_save  # type: ignore[method-assign]
    for case in cases:
        assert (await store.create_case(case)).created
        await dedup.opened(case)
    (spots,) = await hotspots.hs.of_cases([cases[1].id])
    (spot,) = spots
    assert spot.status == "open" and sorted(spot.open_case_ids) == [cases[1].id, cases[2].id]
    assert cases[0].id in spot.case_ids


# listing hotspots by status --------------------------------------------------------------------

async def _list(client: Any, status: str, limit: int) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/hotspots", params={"status": status, "limit": str(limit)})
    assert resp.status == 200
    return (await resp.json())["hotspots"]


async def test_a_listing_by_status_holds_up_to_limit_of_that_status_newest_first(client: Any) -> None:
    hs = client.app[HOTSPOTS].hs
    now = time.time()
    made: dict[str, str] = {}  # id → status, oldest first
    # Each batch is newer than the ones before: more open than closed on top, then more closed, then mixed.
    for batch in ("ccoooooo", "cccccccoo", "ocococococ", "oocccccccc"):
        for kind in batch:
            spot = hs.new(f"地点{len(made)}", "城乡建设", now - 1000 + len(made))
            spot.case_ids = [f"20250101-{len(made):06d}"]
            spot.open_case_ids = list(spot.case_ids)
            if kind == "c":
                spot.status, spot.closed_at, spot.open_case_ids = "closed", now, []
            await hs.save(spot, event="raised")
            made[spot.id] = spot.status
        newest_first = list(reversed(made))
        for status in ("open", "closed", "all"):
            wanted = [h for h in newest_first if status in ("all", made[h])]
            for limit in (1, 2, 3, 7, len(made) + 5):
                got = await _list(client, status, limit)
                assert [h["id"] for h in got] == wanted[:limit], (batch, status, limit)
