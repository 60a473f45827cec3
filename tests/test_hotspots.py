"""Hotspots: raised at N reporters of similar open cases at one place, closed when those cases close."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hotline.app import create_app
from hotline.appkeys import HOTSPOTS, STORE
from hotline.status import Status
from tests.conftest import make_settings
from tests.nlp_support import count_recounts

SIMILAR = [
    "阳光花园小区3栋楼下的烧烤店每天晚上油烟很大，噪音扰民到凌晨两点，请有关部门管一管。",
    "阳光花园小区3栋楼下烧烤店晚上油烟熏人，噪音吵得睡不着。",
    "阳光花园3栋楼下烧烤摊油烟和噪音严重扰民，晚上根本没法休息。",
]
UNRELATED = "阳光花园小区的电梯经常坏，已经停运一个星期了，老人上下楼很不方便。"


async def _post(client: Any, text: str, contact: str) -> dict[str, Any]:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _hotspots(client: Any, status: str = "open") -> list[dict[str, Any]]:
    await client.app[HOTSPOTS].settled()  # evaluations run in the background after intake answers
    resp = await client.get(f"/api/v1/hotspots?status={status}")
    assert resp.status == 200
    return (await resp.json())["hotspots"]


async def _close(store: Any, case_id: str) -> None:
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED, Status.CLOSED):
        await store.update_case(case_id, lambda c: None, actor="t", action=str(target), target=target)


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_hotspot_raised_at_n_reporters_and_closed_when_its_cases_close(hs_client: Any) -> None:
    store = hs_client.app[STORE]
    ids = [(await _post(hs_client, SIMILAR[0], "13800000101"))["case_id"],
           (await _post(hs_client, SIMILAR[1], "13800000102"))["case_id"]]
    await _post(hs_client, UNRELATED, "13800000103")
    assert await _hotspots(hs_client) == []  # two similar reporters, one unrelated: below 3

    ids.append((await _post(hs_client, SIMILAR[2], "13800000104"))["case_id"])
    assert [c.status for c in await store.get_cases(ids)] == [Status.CLASSIFIED] * 3  # three separate cases
    (hot,) = await _hotspots(hs_client)
    assert hot["status"] == "open" and hot["reporters"] == 3
    assert sorted(hot["case_ids"]) == sorted(ids)
    assert "阳光" in hot["place"]
    assert "contact" not in hot and "text" not in hot
    assert "hotspot_raised" in [e.action for e in await store.events(ids[0])]
    events = await hs_client.app[HOTSPOTS].hs.events()
    assert [e["action"] for e in events][:1] == ["raised"]

    # Closing two cases leaves the hotspot open; closing the last one closes it (via the change feed).
    for cid in ids[:2]:
        await _close(store, cid)

    async def one_left() -> bool:
        spots = await _hotspots(hs_client)
        return len(spots) == 1 and spots[0]["open_case_ids"] == [ids[2]]

    await _wait_for(one_left)
    await _close(store, ids[2])

    async def closed() -> bool:
        return await _hotspots(hs_client) == [] and len(await _hotspots(hs_client, "closed")) == 1

    await _wait_for(closed)
    (done,) = await _hotspots(hs_client, "closed")
    assert done["id"] == hot["id"] and done["closed_at"] >= done["opened_at"]
    assert "closed" in [e["action"] for e in await hs_client.app[HOTSPOTS].hs.events()]


async def test_merged_reporters_count_towards_a_hotspot(aiohttp_client: Any, redis_server: Any, tmp_path: Path,
                                                       key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dedup={"hotspot_min_reporters": 3})
    client = await aiohttp_client(create_app(settings))
    first = await _post(client, SIMILAR[0], "13800000201")
    second = await _post(client, "投诉阳光花园小区3栋楼下烧烤店，油烟大、噪音扰民一直到凌晨两点，希望尽快处理。",
                         "13800000202")
    assert second["merged_into"] == first["case_id"]
    assert await _hotspots(client) == []
    third = await _post(client, "阳光花园小区3栋楼下烧烤店每天晚上油烟大，噪音扰民到凌晨两点，请管一管。",
                        "13800000203")
    assert third["merged_into"] == first["case_id"]
    (hot,) = await _hotspots(client)
    assert hot["reporters"] == 3 and hot["case_ids"] == [first["case_id"]]


async def test_a_new_case_with_nothing_similar_at_its_place_reads_no_hotspot_or_case(hs_client: Any,
                                                                                     monkeypatch: Any) -> None:
    service = hs_client.app[HOTSPOTS]
    looked_up: list[list[str]] = []
    of_cases = service.hs.of_cases

    async def counting(case_ids: list[str]) -> Any:
        looked_up.append(list(case_ids))
        return await of_cases(case_ids)

    monkeypatch.setattr(service.hs, "of_cases", counting)
    await _post(hs_client, UNRELATED, "13800000301")
    assert await _hotspots(hs_client) == [] and looked_up == []
    first = (await _post(hs_client, SIMILAR[0], "13800000302"))["case_id"]
    assert await _hotspots(hs_client) == [] and looked_up == []
    # The next similar report at that place has a neighbour: the cluster's hotspots and records are read.
    second = (await _post(hs_client, SIMILAR[1], "13800000303"))["case_id"]
    assert await _hotspots(hs_client) == []
    assert looked_up == [sorted([first, second])]


async def test_one_reporter_raises_a_hotspot_when_the_threshold_is_one(aiohttp_client: Any, redis_server: Any,
                                                                      tmp_path: Path, key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dedup={"hotspot_min_reporters": 1})
    client = await aiohttp_client(create_app(settings))
    case_id = (await _post(client, SIMILAR[0], "13800000401"))["case_id"]
    (hot,) = await _hotspots(client)
    assert hot["reporters"] == 1 and hot["case_ids"] == [case_id]


async def test_hotspots_api_rejects_bad_queries(client: Any) -> None:
    # "²" and "①" pass str.isdigit() but int() refuses them.
    for query in ("status=nope", "limit=0", "limit=abc", "limit=100000", "limit=%C2%B2", "limit=%E2%91%A0"):
        resp = await client.get(f"/api/v1/hotspots?{query}")
        assert resp.status == 400
        body = await resp.json()
        assert body["error"]["code"] in ("bad_status", "bad_limit")
    assert (await client.get("/api/v1/hotspots")).status == 200


# Other problems at the same place, each scoring below the hotspot similarity against the rest.
OTHER_PROBLEMS = ["电梯经常坏，已经停运一个星期了，老人上下楼很不方便，维保公司一直推脱",
                  "路灯一直不亮，晚上回家黑灯瞎火，上周已经有老人摔倒骨折",
                  "垃圾桶满了没人清运，臭味很大招苍蝇，夏天根本不敢开窗",
                  "停车位被外来车辆长期占用，业主下班回家没地方停车只能停马路上",
                  "楼道里堆满纸箱和旧家具，存在严重的火灾隐患，物业不管",
                  "物业私自上调物业费，没有召开业主大会也没有公示收支账目",
                  "绿化带被个别住户毁掉种菜，还浇粪水，气味难闻",
                  "门禁系统坏了半个月，陌生人随便进出，业主担心失窃",
                  "儿童游乐区的滑梯螺丝松动，孩子玩耍很危险，希望尽快维修",
                  "外墙瓷砖脱落，砸坏了楼下停的汽车，幸好没有砸到人",
                  "有人在楼顶私搭鸽棚，鸽子粪便污染太阳能热水器",
                  "快递柜占用消防通道，消防车根本进不来",
                  "供暖温度不达标，室内只有十四度，家里老人孩子冻得感冒",
                  "二次供水水箱多年未清洗，自来水发黄有异味",
                  "装修公司周末也在电钻施工，严重影响休息",
                  "化粪池堵塞污水外溢，流到单元门口"]


def _spy_lookups(monkeypatch: Any, service: Any) -> tuple[list[bool], list[int]]:
    """Record each place lookup's cut flag and each bigram lookup of the hotspot evaluations."""
    cuts: list[bool] = []
    full: list[int] = []
    lookup, candidates = service.index.lookup, service.index.candidates

    async def spy_lookup(keys: dict[str, float], **kwargs: Any) -> Any:
        found, cut = await lookup(keys, **kwargs)
        if all(k.startswith("@") for k in keys):
            cuts.append(cut)
        return found, cut

    async def spy_candidates(keys: dict[str, float], **kwargs: Any) -> Any:
        full.append(len(keys))
        return await candidates(keys, **kwargs)

    monkeypatch.setattr(service.index, "lookup", spy_lookup)
    monkeypatch.setattr(service.index, "candidates", spy_candidates)
    return cuts, full


async def test_at_a_quiet_place_only_the_place_postings_are_read(hs_client: Any, monkeypatch: Any) -> None:
    cuts, full = _spy_lookups(monkeypatch, hs_client.app[HOTSPOTS])
    ids = [(await _post(hs_client, text, f"1380000050{i}"))["case_id"] for i, text in enumerate(SIMILAR)]
    (hot,) = await _hotspots(hs_client)
    assert sorted(hot["case_ids"]) == sorted(ids)
    assert cuts and not any(cuts) and full == []


async def test_a_busy_place_finds_its_hotspot_by_the_seeds_distinctive_bigrams(hs_client: Any,
                                                                               monkeypatch: Any) -> None:
    for i, problem in enumerate(OTHER_PROBLEMS):  # more cases at the place than one evaluation scores
        await _post(hs_client, f"阳光花园小区{problem}。", f"138000006{i:02d}")
    assert await _hotspots(hs_client) == []
    cuts, full = _spy_lookups(monkeypatch, hs_client.app[HOTSPOTS])
    ids = [(await _post(hs_client, text, f"1380000070{i}"))["case_id"] for i, text in enumerate(SIMILAR)]
    (hot,) = await _hotspots(hs_client)
    assert sorted(hot["case_ids"]) == sorted(ids) and hot["reporters"] == 3
    assert cuts and all(cuts) and len(full) == len(cuts) and min(full) > 1


async def test_hotspot_scoring_uses_the_bigram_counts_the_duplicate_check_kept(hs_client: Any,
                                                                              monkeypatch: Any) -> None:
    counted = count_recounts(monkeypatch)
    for n, text in enumerate(SIMILAR):
        await _post(hs_client, text, f"1380000030{n}")
    (hot,) = await _hotspots(hs_client)
    assert hot["reporters"] == 3
    # Every case was checked by this process before it was stored: none is counted again for a hotspot.
    assert counted == []
