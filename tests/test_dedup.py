"""Duplicate matching: scoring, the candidate index in the real embedded Valkey, merging through the app."""

from __future__ import annotations

import io
import json
import math
import random
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from hotline import fingerprints
from hotline.app import create_app
from hotline.appkeys import DEDUP, HOTSPOTS, STORE
from hotline.cli import main as cli_main
from hotline.dedup import DedupConfig, DedupError, DedupService, load_idf
from hotline.nlp.dedup import (
    OTHER_PLACE_LOGIT,
    SAME_CALLER_LOGIT,
    Idf,
    Thresholds,
    decide,
    fingerprint,
    pair_score,
    split_headline,
)
from hotline.nlp.places import distance_m, place_cores
from hotline.records import Case
from hotline.status import Status
from hotline.store.dedup import DedupIndex, IndexEntry
from tests.conftest import make_settings
from tests.nlp_support import count_recounts

BBQ_1 = "阳光花园小区3栋楼下的烧烤店每天晚上油烟很大，噪音扰民到凌晨两点，请有关部门管一管。"
BBQ_2 = "投诉阳光花园小区3栋楼下烧烤店，油烟大、噪音扰民一直到凌晨两点，希望尽快处理。"
LIFT = "阳光花园小区的电梯经常坏，已经停运一个星期了，老人上下楼很不方便。"
DAY = 86400.0


@pytest.fixture(scope="module")
def idf() -> Idf:
    return Idf.load(Path(__file__).resolve().parent.parent / "config" / "dedup_idf.tsv")


def score(a: str, b: str, idf: Idf, **kw: Any) -> float:
    fa = fingerprint(*split_headline(a), idf)
    fb = fingerprint(*split_headline(b), idf)
    return pair_score(fa, fb, idf, **kw).score


# pure scoring ------------------------------------------------------------------

def test_place_cores_meet_across_wordings() -> None:
    assert place_cores("举报A7县星沙镇星沙派1栋违建") == ["星沙派"]
    assert "金山" in place_cores("我是金山花园业主")
    assert "中华城" in place_cores("甘井子区南关岭街道中华城小区1期2号楼电梯坠梯")
    assert 1100 < distance_m(39.90, 116.40, 39.91, 116.40) < 1125


def test_reworded_repeat_scores_above_auto_merge_and_other_problem_same_place_stays_new(idf: Idf) -> None:
    t = Thresholds(auto_merge=0.9, suggest=0.4)
    assert decide(score(BBQ_1, BBQ_2, idf), t) == "merge"
    assert decide(score(BBQ_1, LIFT, idf), t) == "new"


def test_alike_words_without_a_shared_place_are_only_suggested(idf: Idf) -> None:
    t = Thresholds(auto_merge=0.9, suggest=0.4)
    a, b = "第1号投诉：垃圾清运不及时，臭味很大。", "第2号投诉：垃圾清运不及时，臭味很大。"
    fa, fb = (fingerprint(*split_headline(x), idf) for x in (a, b))
    loose = pair_score(fa, fb, idf)
    assert loose.score >= 0.9 and not loose.anchored
    assert decide(loose.score, t, anchored=loose.anchored) == "suggest"
    same_caller = pair_score(fa, fb, idf, same_caller=True)
    assert same_caller.anchored and decide(same_caller.score, t, anchored=True) == "merge"
    near = pair_score(fa, fb, idf, distance=50.0)
    assert near.anchored and decide(near.score, t, anchored=True) == "merge"
    far = pair_score(fa, fb, idf, distance=5000.0)
    assert not far.anchored


def test_masked_runs_do_not_make_texts_alike(idf: Idf) -> None:
    a = "我家电话是138********，地址是****小区0000号，楼道灯坏了，晚上出门很不方便。"
    b = "联系电话138********，****小区0000号，孩子上学报名问题想咨询一下。"
    assert score(a, b, idf) < 0.2
    # The same two texts without masks but sharing a long number would still be far apart.
    assert score(a.replace("*", "").replace("0", ""), b.replace("*", "").replace("0", ""), idf) < 0.4


def test_same_caller_and_coordinates_move_the_score(idf: Idf) -> None:
    a = "阳光花园小区3栋楼下烧烤店晚上油烟熏人。"
    b = "阳光花园3栋楼下烧烤摊油烟和噪音严重扰民，晚上根本没法休息。"
    plain = score(a, b, idf)

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    assert logit(score(a, b, idf, same_caller=True)) - logit(plain) == pytest.approx(SAME_CALLER_LOGIT)
    assert logit(score(a, b, idf, distance=5000.0)) - logit(plain) == pytest.approx(OTHER_PLACE_LOGIT)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        Thresholds(auto_merge=0.3, suggest=0.5)


def test_eval_dedup_numbers_come_from_the_given_file(tmp_path: Path) -> None:
    rows = [
        {"pair_id": "p1", "a_title": "阳光花园烧烤店油烟扰民", "a_text": BBQ_1, "b_title": "阳光花园烧烤油烟噪音",
         "b_text": BBQ_2, "label": "dup", "a_time": "", "b_time": ""},
        {"pair_id": "p2", "a_title": "阳光花园电梯故障", "a_text": LIFT, "b_title": "阳光花园电梯故障",
         "b_text": LIFT, "label": "dup", "a_time": "", "b_time": ""},
        # A pair labelled dup whose texts have nothing in common: the matcher must miss it (a false negative).
        {"pair_id": "p3", "a_title": "公积金提取", "a_text": "公积金提取需要什么材料？", "b_title": "路灯不亮",
         "b_text": "解放路的路灯坏了一个月。", "label": "dup", "a_time": "", "b_time": ""},
        {"pair_id": "p4", "a_title": "烧烤店油烟扰民", "a_text": BBQ_1, "b_title": "电梯停运",
         "b_text": LIFT, "label": "related", "a_time": "", "b_time": ""},
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["nlp", "eval-dedup", "--data", str(data), "--json"]) == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["n"] == 4
    assert result["precision"] == 1.0
    assert result["recall"] == pytest.approx(2 / 3, abs=1e-3)
    assert result["f1"] == pytest.approx(0.8, abs=1e-3)


def test_eval_dedup_refuses_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a_text": "x", "b_text": "y", "label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(SystemExit):
        cli_main(["nlp", "eval-dedup", "--data", str(bad), "--json"])
    assert cli_main(["nlp", "eval-dedup", "--data", str(tmp_path / "missing.jsonl"), "--json"]) == 2


# the service on the real store ------------------------------------------------------

def _case(case_id: str, text: str, created_at: float, *, contact: str = "", sender: str = "") -> Case:
    return Case(id=case_id, channel="api", sender=sender or f"api:{case_id}", status=Status.CLASSIFIED,
                created_at=created_at, updated_at=created_at, text=text, normalized_text=text, contact=contact)


async def test_window_expiry_uses_case_timestamps(store: Any, settings: Any) -> None:
    config = DedupConfig.from_settings(settings)
    service = DedupService(store, config, load_idf(settings))
    now = time.time()
    old = _case("20250101-000001", BBQ_1, now - (config.default_window_s / DAY + 5) * DAY)
    recent = _case("20250101-000002", BBQ_1, now - 3 * DAY)
    for c in (old, recent):
        assert (await store.create_case(c)).created
        await service.opened(c)
    new = _case("20250101-000003", BBQ_2, now)
    decision = await service.check(new)
    assert decision.action == "merge" and decision.case_id == recent.id
    assert all(c["case_id"] != old.id for c in decision.candidates)
    # Once the recent case has also aged out, nothing is a candidate any more.
    later = _case("20250101-000004", BBQ_2, now + config.default_window_s)
    assert (await service.check(later)).action == "new"
    assert await service.prune(now + config.max_window_s) == 2
    assert await service.index.size() == 0


async def test_an_older_open_case_scores_lower_than_a_recent_one(store: Any, settings: Any) -> None:
    """The same repeat counts less against a case opened three weeks ago than against yesterday's."""
    service = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    now = time.time()
    weeks = _case("20250105-000001", BBQ_1, now - 21 * DAY)
    yesterday = _case("20250105-000002", BBQ_1, now - 1 * DAY)
    for c in (weeks, yesterday):
        assert (await store.create_case(c)).created
        await service.opened(c)
    new = _case("20250105-000003", BBQ_2, now)
    decision = await service.check(new)
    scores = {c["case_id"]: c["score"] for c in decision.candidates}
    assert decision.case_id == yesterday.id
    assert scores[yesterday.id] > scores[weeks.id]
    fp_new, fp_old = service.fingerprint(new), service.fingerprint(weeks)
    assert scores[weeks.id] == pytest.approx(pair_score(fp_new, fp_old, service.idf, days=21).score, abs=2e-3)
    assert scores[yesterday.id] == pytest.approx(pair_score(fp_new, fp_old, service.idf, days=1).score, abs=2e-3)


async def test_a_case_and_its_index_entry_are_written_together_or_not_at_all(store: Any, settings: Any) -> None:
    service = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    now = time.time()
    first = _case("20250103-000001", BBQ_1, now)
    assert (await service.check(first)).action == "new"
    filing = service.filing(first)
    assert filing is not None
    assert (await store.create_case(first, idempotency_keys=["k1"], filing=filing)).created
    assert await service.index.contains(first.id)
    assert (await service.check(_case("20250103-000002", BBQ_2, now + 1))).case_id == first.id
    # An idempotency key already taken: the script writes nothing, neither the case nor its entry.
    other = _case("20250103-000003", LIFT, now + 2)
    await service.check(other)
    result = await store.create_case(other, idempotency_keys=["k1"], filing=service.filing(other))
    assert not result.created and result.case_id == first.id
    assert not await store.case_exists(other.id) and not await service.index.contains(other.id)


async def test_a_checked_cases_bigram_counts_serve_the_lookups_that_find_it(store: Any, settings: Any,
                                                                            monkeypatch: Any) -> None:
    service = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    counted = count_recounts(monkeypatch)
    now = time.time()
    first = _case("20250104-000001", BBQ_1, now)
    await service.check(first)
    assert (await store.create_case(first, filing=service.filing(first))).created
    assert (await service.check(_case("20250104-000002", BBQ_2, now + 1))).case_id == first.id
    assert counted == []  # counted once, when it was checked itself
    # A process that did not check it counts it once, then keeps the counts.
    other = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    for n in (3, 4):
        assert (await other.check(_case(f"20250104-00000{n}", BBQ_2, now + n))).case_id == first.id
    assert len(counted) == 1
    # Counts are kept with the text they were counted from: a changed entry is counted again.
    entry = await service.index.get(first.id)
    assert entry is not None
    entry.text = entry.text + "又有新情况"
    assert other.counts.candidates([entry])[0].counted is not None and len(counted) == 2
    # ... and kept with the new text: the next lookup uses them.
    assert other.counts.candidates([entry])[0].counted is not None and len(counted) == 2
    small = fingerprints.CandidateCounts(load_idf(settings), size=2)
    for n in range(3):
        small.remember(f"c{n}", fingerprint("", f"第{n}号楼漏水", small.idf))
    assert len(small) == 2


async def test_category_windows_come_from_the_table(settings: Any) -> None:
    config = DedupConfig.from_settings(settings)
    assert config.window_for("环境保护") == 14 * DAY
    assert config.window_for("没有这个类别") == config.default_window_s


async def test_closed_cases_are_not_candidates(store: Any, settings: Any) -> None:
    service = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    now = time.time()
    master = _case("20250102-000001", BBQ_1, now - 60)
    await store.create_case(master)
    await service.opened(master)
    # Closed behind the index's back (no feed worker here): the lookup re-checks and drops it.
    await store.update_case(master.id, lambda c: None, actor="t", action="answered", target=Status.ANSWERED)
    assert (await service.check(_case("20250102-000002", BBQ_2, now))).action == "new"
    assert not await service.index.contains(master.id)


# the whole app ------------------------------------------------------------------

async def _post(client: Any, text: str, contact: str, channel: str = "api") -> dict[str, Any]:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact, "channel": channel})
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()


async def test_reworded_repeat_via_two_channels_is_one_case_with_two_reporters(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000001", channel="web")
    second = await _post(client, BBQ_2, "13900000002", channel="api")
    assert first["merged_into"] == ""
    assert second["created"] is True
    assert second["merged_into"] == first["case_id"]
    assert first["case_id"] in second["reply"] and second["case_id"] in second["reply"]

    master = await (await client.get(f"/api/v1/cases/{first['case_id']}")).json()
    assert master["reporter_count"] == 2
    assert master["reports"][0]["report_id"] == second["case_id"]
    assert master["priority"] >= 1
    report = await (await client.get(f"/api/v1/cases/{second['case_id']}")).json()
    assert report["status"] == "merged" and report["duplicate_of"] == first["case_id"]
    store = client.app[STORE]
    assert "report_merged" in [e.action for e in await store.events(first["case_id"])]
    assert "merged" in [e.action for e in await store.events(second["case_id"])]
    # The report keeps its own contact; the open case keeps its own.
    full = await store.get_case(first["case_id"])
    assert full.reports[0].contact == "13900000002" and full.contact == "13800000001"


async def test_a_repeat_joins_the_checked_case_without_reading_its_record_or_index_entry(client: Any,
                                                                                       monkeypatch: Any) -> None:
    first = await _post(client, BBQ_1, "13800000081")
    store, service, hotspots = client.app[STORE], client.app[DEDUP], client.app[HOTSPOTS]
    await hotspots.settled()
    reads: list[str] = []
    get_case, changed_later = store.get_case, hotspots.changed_later
    index_get = {id(service.index): service.index.get, id(hotspots.index): hotspots.index.get}

    async def spy_case(case_id: str) -> Any:
        reads.append(f"case:{case_id}")
        return await get_case(case_id)

    def spy_entry(index: Any) -> Any:
        async def get(case_id: str) -> Any:
            reads.append(f"entry:{case_id}")
            return await index_get[id(index)](case_id)
        return get

    held: list[str] = []

    async def hold(case_id: str) -> None:
        held.append(case_id)

    get = store.r.get

    async def spy_get(key: str) -> Any:
        reads.append(f"get:{key}")
        return await get(key)

    monkeypatch.setattr(store, "get_case", spy_case)
    monkeypatch.setattr(store.r, "get", spy_get)
    for index in (service.index, hotspots.index):
        monkeypatch.setattr(index, "get", spy_entry(index))
    monkeypatch.setattr(hotspots, "changed_later", hold)
    second = await _post(client, BBQ_2, "13900000082")
    assert second["merged_into"] == first["case_id"]
    # The check has just seen the open case's status and read its record with it: the report joins it with
    # no read of its own, and the hotspot re-evaluation of the case (held here) reads its index entry after
    # the answer.
    assert reads == [] and held == [first["case_id"]]
    assert len((await store.get_case(first["case_id"])).reports) == 1
    reads.clear()
    await changed_later(first["case_id"])
    await hotspots.settled()
    assert reads == [f"entry:{first['case_id']}"]


async def test_a_new_complaint_gets_its_number_in_the_duplicate_lookups_round_trip(client: Any,
                                                                                  monkeypatch: Any) -> None:
    store = client.app[STORE]
    sent: list[str] = []
    execute = store.r.execute_command
    scripts = {store._create.sha: "create", store._claim.sha: "claim",
               client.app[DEDUP].index._rank.sha: "lookup", client.app[DEDUP].index._claim_rank.sha: "claim+lookup"}

    async def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append(scripts.get(str(args[1]), str(args[1])) if args[0] == "EVALSHA" else str(args[0]))
        return await execute(*args, **kwargs)

    await _post(client, LIFT, "13800000091")  # scripts loaded
    await client.app[HOTSPOTS].settled()
    monkeypatch.setattr(store.r, "execute_command", spy)
    first = await _post(client, BBQ_1, "13800000092")
    # (The hotspot worker's own lookups run beside the intake; they are not the intake's.)
    assert [c for c in sent if c in ("claim", "claim+lookup", "create")] == ["claim+lookup", "create"]
    # A retry with the same Idempotency-Key: the same round trip finds the case, nothing else is looked up.
    await client.app[HOTSPOTS].settled()
    sent.clear()
    resp = await client.post("/api/v1/complaints", json={"text": BBQ_1, "contact": "13800000092"})
    assert resp.status == 200 and (await resp.json())["case_id"] == first["case_id"]
    assert [c for c in sent if c != "lookup"][:1] == ["claim+lookup"] and "create" not in sent


async def test_a_new_case_is_filed_in_the_index_by_its_create(client: Any, monkeypatch: Any) -> None:
    service = client.app[DEDUP]
    adds: list[str] = []
    add = service.index.add

    async def counting(entry: Any) -> None:
        adds.append(entry.case_id)
        await add(entry)

    monkeypatch.setattr(service.index, "add", counting)
    first = await _post(client, BBQ_1, "13800000091")
    assert await service.index.contains(first["case_id"]) and adds == []
    second = await _post(client, BBQ_2, "13900000092")
    assert second["merged_into"] == first["case_id"]  # found through the entry its create wrote


async def test_unrelated_complaint_at_same_place_stays_separate(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000011")
    other = await _post(client, LIFT, "13900000012")
    assert other["merged_into"] == ""
    master = await (await client.get(f"/api/v1/cases/{first['case_id']}")).json()
    assert master["reporter_count"] == 1
    assert (await client.app[STORE].get_case(other["case_id"])).status == Status.CLASSIFIED


async def test_exact_resubmission_never_creates_a_second_case(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000021")
    again = await _post(client, BBQ_1, "13800000021")
    assert again["created"] is False and again["case_id"] == first["case_id"]
    assert await client.app[STORE].count() == 1


async def test_undo_restores_the_report_as_its_own_open_case(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000031")
    second = await _post(client, BBQ_2, "13900000032")
    assert second["merged_into"] == first["case_id"]
    service: DedupService = client.app[DEDUP]
    restored = await service.unmerge(second["case_id"], "ct:zhang")
    assert restored.status == Status.CLASSIFIED and restored.duplicate_of == ""
    store = client.app[STORE]
    master = await store.get_case(first["case_id"])
    assert master.reporter_count == 1 and master.priority == 0
    assert "unmerged" in [e.action for e in await store.events(first["case_id"])]
    undo = [e for e in await store.events(second["case_id"]) if e.action == "unmerged"]
    assert undo and undo[0].actor == "ct:zhang" and undo[0].data["to"] == "classified"
    assert second["case_id"] in await store.confirm_queue()
    assert await service.index.contains(second["case_id"])
    # The call-taker said "not the same": re-checking the restored report never proposes that case again.
    decision = await service.check(await store.get_case(second["case_id"]))
    assert all(c["case_id"] != first["case_id"] for c in decision.candidates)
    assert decision.case_id != first["case_id"]
    with pytest.raises(DedupError) as err:
        await service.unmerge(second["case_id"], "ct:zhang")
    assert err.value.code == "not_merged"


async def test_confirm_and_reject_by_call_taker(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000041")
    other = await _post(client, LIFT, "13900000042")
    service: DedupService = client.app[DEDUP]
    store = client.app[STORE]
    rejected = await service.reject(other["case_id"], first["case_id"], "ct:li")
    assert all(c["case_id"] != first["case_id"] for c in rejected.duplicate_candidates)
    assert first["case_id"] in await service.index.rejected(other["case_id"])
    merged = await service.confirm_merge(other["case_id"], first["case_id"], "ct:li")
    assert merged.status == Status.MERGED and merged.duplicate_of == first["case_id"]
    master = await store.get_case(first["case_id"])
    assert master.reports[0].merged_by == "ct:li" and master.reporter_count == 2
    with pytest.raises(DedupError) as err:
        await service.confirm_merge(other["case_id"], first["case_id"], "ct:li")
    assert err.value.status == 409
    with pytest.raises(DedupError) as missing:
        await service.confirm_merge("20000101-999999", first["case_id"], "ct:li")
    assert missing.value.status == 404


async def test_merge_into_a_closed_case_is_refused_and_leaves_the_report_open(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000051")
    other = await _post(client, LIFT, "13900000052")
    store = client.app[STORE]
    await store.update_case(first["case_id"], lambda c: None, actor="t", action="answered", target=Status.ANSWERED)
    with pytest.raises(DedupError):
        await client.app[DEDUP].confirm_merge(other["case_id"], first["case_id"], "ct:li")
    back = await store.get_case(other["case_id"])
    assert back.status == Status.CLASSIFIED and back.duplicate_of == ""


async def test_case_closing_between_check_and_merge_leaves_the_report_its_own_open_case(client: Any) -> None:
    first = await _post(client, BBQ_1, "13800000071")
    service, store = client.app[DEDUP], client.app[STORE]
    check = service.check

    async def check_then_close(case: Any, **kwargs: Any) -> Any:
        decision = await check(case, **kwargs)
        assert decision.action == "merge"
        await store.update_case(first["case_id"], lambda c: None, actor="t", action="answered",
                                target=Status.ANSWERED)
        return decision

    service.check = check_then_close  # type: ignore[method-assign]
    resp = await client.post("/api/v1/complaints", json={"text": BBQ_2, "contact": "13900000072", "channel": "api"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["merged_into"] == "" and body["case_id"] in body["reply"]
    report = await store.get_case(body["case_id"])
    assert report.status == Status.CLASSIFIED and report.duplicate_of == ""
    assert body["case_id"] in await store.confirm_queue()
    assert [e.action for e in await store.events(body["case_id"])][-2:] == ["merged", "unmerged"]


async def test_dedup_can_be_switched_off(aiohttp_client: Any, redis_server: Any, tmp_path: Path,
                                         key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dedup={"enabled": False})
    client = await aiohttp_client(create_app(settings))
    await _post(client, BBQ_1, "13800000061")
    second = await _post(client, BBQ_2, "13900000062")
    assert second["merged_into"] == ""


async def test_lookup_returns_the_heaviest_cases_in_order_with_ties_by_id(store: Any) -> None:
    index = DedupIndex(store)
    rnd = random.Random(11)
    now = time.time()
    keys = [f"k{i}" for i in range(6)]
    held: dict[str, list[str]] = {}
    for n in range(24):
        case_id = f"20250105-{n:06d}"
        held[case_id] = rnd.sample(keys, rnd.randint(1, 4))
        await index.add(IndexEntry(case_id=case_id, created_at=now - n, category="", window_s=86400, text="t",
                                   headline="h", places=[], callers=[], location=None, keys=held[case_id]))
    gone = "20250105-000003"
    await store.r.delete(index.k_meta(gone))  # left the index between two feed reads: never returned
    await index.add_rejection("20250105-999999", "20250105-000005")
    for weights in ({k: 1.0 for k in keys}, {k: float(i % 3 + 1) for i, k in enumerate(keys)}):
        for limit in (1, 5, 12, 30):
            found, cut = await index.lookup(weights, now=now, max_window_s=86400, limit=limit,
                                            asking="20250105-999999")
            ranked = sorted((c for c in held if c != "20250105-000005"),
                            key=lambda c: (-sum(weights[k] for k in held[c]), c))[:limit]
            assert [e.case_id for e in found] == [c for c in ranked if c != gone]
            assert [e.hits for e in found] == [sum(weights[k] for k in held[e.case_id]) for e in found]
            assert cut == (limit < 23)


async def test_a_claim_in_the_lookup_spends_no_number_on_a_retry(store: Any) -> None:
    index = DedupIndex(store)
    now = time.time()
    await index.add(IndexEntry(case_id="20250106-000001", created_at=now, category="", window_s=86400, text="t",
                               headline="h", places=[], callers=[], location=None, keys=["k"]))
    first = store.claim(["req:a"], now)
    found, _cut = await index.lookup({"k": 1.0}, now=now, max_window_s=86400, limit=5, claim=first)
    assert first.settled and not first.earlier and [e.case_id for e in found] == ["20250106-000001"]
    await store.r.set(store.k_idem("req:a"), first.case_id)
    retry = store.claim(["req:b", "req:a"], now)
    assert await index.lookup({"k": 1.0}, now=now, max_window_s=86400, limit=5, claim=retry) == ([], False)
    assert retry.earlier and retry.case_id == first.case_id
    # No key to look up (a text without bigrams): the claim still runs, and the number follows on.
    following = store.claim(["req:c"], now)
    assert await index.lookup({}, now=now, max_window_s=86400, limit=5, claim=following) == ([], False)
    assert not following.earlier
    assert int(following.case_id[-6:]) == int(first.case_id[-6:]) + 1
