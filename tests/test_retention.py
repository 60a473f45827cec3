"""Personal data leaves old closed cases: phone, name, sender, photos, recording, caller index; the rest stays."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.appkeys import ATTACHMENTS, DEDUP, INTAKE, SETTINGS, STORE
from hotline.attachments import name_of
from hotline.callers import caller_keys
from hotline.records import Case, InboundMessage
from hotline.retention import ACTOR, Retention
from hotline.status import Status
from hotline.store import Store
from hotline.store.surveys import FEED_GROUP, FOLLOWUP, MAIN, Recipient, Survey, SurveyStore
from tests.test_attachments import form, png

PHONE = "13812345678"


async def close(client: TestClient, case_id: str) -> None:
    store = client.app[STORE]
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED, Status.CLOSED):
        await store.update_case(case_id, lambda c: {}, actor="system", action=str(target), target=target)
    # The survey worker may have caught the case in its resolved moment and scheduled a round: these tests set
    # up the rounds they need themselves (a round still asking would keep the case from the purge).
    await surveys_caught_up(store)
    await store.r.delete(SurveyStore(store).k_survey(case_id))


async def surveys_caught_up(store: Store) -> None:
    """Until the survey worker has handled every change in the feed so far."""
    last = await store.feed_last_id()
    for _ in range(500):
        groups = {g["name"]: g for g in await store.r.xinfo_groups(store.k_feed)}
        group = groups.get(FEED_GROUP)
        if group is not None and group["pending"] == 0 and \
                tuple(map(int, group["last-delivered-id"].split("-"))) >= tuple(map(int, last.split("-"))):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the survey worker did not catch up")


async def test_purge_removes_what_identifies_the_citizen_and_keeps_the_record(client: TestClient) -> None:
    store = client.app[STORE]
    data_dir = client.app[SETTINGS].data_dir
    resp = await client.post("/submit", data=form(f"幸福小区路灯坏了，我电话{PHONE}，身份证110101199003071234",
                                                  ("a.png", png(), "image/png"), token="t1"))
    assert resp.status == 201
    photo_case = (await store.get_cases(await store.case_ids(limit=1)))[0]
    recording = data_dir / "recordings" / "20261124" / "call-1.wav"
    recording.parent.mkdir(parents=True, exist_ok=True)
    recording.write_bytes(b"RIFF....WAVE")
    outside = data_dir.parent / "outside.wav"
    outside.write_bytes(b"not ours")
    call = await client.app[INTAKE].submit(InboundMessage(
        channel="voice", sender=PHONE, contact=PHONE, text="楼下餐馆油烟太大", transcript="楼下餐馆油烟太大",
        audio_ref="recordings/20261124/call-1.wav"))
    hostile = await client.app[INTAKE].submit(InboundMessage(
        channel="voice", sender="13900001111", contact="13900001111", text="和平巷的健身器材坏了",
        audio_ref="../outside.wav"))
    still_open = await client.app[INTAKE].submit(InboundMessage(
        channel="api", sender="x", contact=PHONE, name="张三", text="人民公园的长椅坏了"))
    for case_id in (photo_case.id, call.case.id, hostile.case.id):
        await close(client, case_id)
    photo_file = client.app[ATTACHMENTS].path(name_of(photo_case.attachments[0]))
    assert photo_file is not None
    surveys = SurveyStore(store)
    await surveys.create(Survey(photo_case.id, photo_case.created_at, recipients={"main": Recipient(
        rid="main", channel="web", sender="web:abc", contact=PHONE, state="answered", resolved=True,
        satisfaction="satisfied", comment=f"有事打{PHONE}", notes=[{"note": f"改打{PHONE}", "outcome": "answered"}])}))

    retention = Retention(store, data_dir, client.app[ATTACHMENTS])
    dry = await retention.purge(0, dry_run=True)
    assert sorted(dry.purged) == sorted([photo_case.id, call.case.id, hostile.case.id])
    assert (await store.get_case(photo_case.id)).contact == PHONE and photo_file.exists()  # dry run: nothing

    done = await retention.purge(0)
    assert sorted(done.purged) == sorted(dry.purged) and done.files_failed == 0
    purged: Case = await store.get_case(photo_case.id)
    assert (purged.contact, purged.name, purged.sender, purged.attachments) == ("", "", "", [])
    assert "路灯坏了" in purged.text and PHONE not in purged.text and "110101199003071234" not in purged.text
    assert purged.status == Status.CLOSED and not photo_file.exists()
    voice = await store.get_case(call.case.id)
    assert voice.audio_ref == "" and voice.sender == "" and not recording.exists()
    assert outside.read_bytes() == b"not ours"  # a record never makes the purge delete outside the data dir
    surveyed = (await surveys.get(photo_case.id)).recipients["main"]
    assert (surveyed.contact, surveyed.sender) == ("", "") and PHONE not in json.dumps(surveyed.notes)
    assert PHONE not in surveyed.comment and (surveyed.resolved, surveyed.satisfaction) == (True, "satisfied")
    events = [e for e in await store.events(photo_case.id) if e.action == "personal_data_purged"]
    assert [e.actor for e in events] == ["system:retention"] and events[0].data["photos"] == 1
    # The open case keeps everything, and the caller index no longer leads to the purged cases.
    kept = await store.get_case(still_open.case.id)
    assert (kept.contact, kept.name) == (PHONE, "张三")
    assert [c.id for c in await store.caller_history(kept)] == []
    # Nothing left to do the second time.
    assert (await retention.purge(0)).purged == []
    # Newer than the cut-off: untouched.
    recent = await client.app[INTAKE].submit(InboundMessage(channel="api", sender="y", contact="13700007777",
                                                            text="和平路井盖松动"))
    await close(client, recent.case.id)
    assert (await retention.purge(3600)).purged == []


def test_cli_purge_personal_reports_json(tmp_path: Path) -> None:
    env = {**os.environ, "HOTLINE_STORE__REDIS_URL": ""}
    run = subprocess.run([sys.executable, "-m", "hotline", "cases", "purge-personal", "--older-than-days", "30",
                          "--dry-run", "--json", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out == {"scanned": 0, "purged": 0, "files_removed": 0, "files_failed": 0, "dry_run": True,
                   "older_than_days": 30.0}
    bad = subprocess.run([sys.executable, "-m", "hotline", "cases", "purge-personal", "--older-than-days", "-1",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "older-than-days" in bad.stdout


# A case reopened while the purge runs ------------------------------------------------------------------

async def reopen(store: Store, case_id: str) -> None:
    """A reporter's 不满意 on the closed case: 重办, confirmed and dispatched again (round 2)."""
    for target, action, data in ((Status.REOPENED, "reopened", {"reason": "还是坏的"}),
                                 (Status.CONFIRMED, "confirmed", {}), (Status.DISPATCHED, "dispatched", {})):
        await store.update_case(case_id, lambda c, d=data: d, actor="staff:fu2", action=action, target=target)


def interleave(monkeypatch: pytest.MonkeyPatch, store: Store, moment: str, case_id: str,
               action: Any) -> list[str]:
    """Run ``action`` once, at ``moment`` of the purge: right after it listed its batch of cases
    ("listed"), or right before it writes ``case_id`` ("write", after everything it reads for it)."""
    fired: list[str] = []
    if moment == "listed":
        get_cases = store.get_cases

        async def listed(ids: list[str]) -> list[Case]:
            batch = await get_cases(ids)
            if not fired and case_id in ids:
                fired.append(moment)
                await action()
            return batch

        monkeypatch.setattr(store, "get_cases", listed)
    else:
        update_case = store.update_case

        async def write(cid: str, *args: Any, **kwargs: Any) -> Case:
            if not fired and cid == case_id and kwargs.get("actor") == ACTOR:
                fired.append(moment)
                await action()
            return await update_case(cid, *args, **kwargs)

        monkeypatch.setattr(store, "update_case", write)
    return fired


@pytest.mark.parametrize("moment", ["listed", "write"])
async def test_a_case_reopened_while_the_purge_runs_keeps_its_citizen(client: TestClient,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     moment: str) -> None:
    store, intake = client.app[STORE], client.app[INTAKE]
    done = await intake.submit(InboundMessage(channel="api", sender="a", contact="13900001111",
                                              text="和平路井盖松动，车辆经过响声很大"))
    case = await intake.submit(InboundMessage(channel="wechat", sender="wx:o-citizen", contact=PHONE,
                                              text="幸福小区路灯坏了一周，晚上很黑"))
    t = case.case.id
    for case_id in (done.case.id, t):
        await close(client, case_id)
    surveys = SurveyStore(store)
    await surveys.create(Survey(t, case.case.created_at, recipients={MAIN: Recipient(
        rid=MAIN, channel="wechat", sender="wx:o-citizen", contact=PHONE, state="answered", resolved=True,
        satisfaction="satisfied")}))
    fired = interleave(monkeypatch, store, moment, t, lambda: reopen(store, t))

    result = await Retention(store, client.app[SETTINGS].data_dir, client.app[ATTACHMENTS]).purge(0)

    assert fired == [moment]
    kept = await store.get_case(t)
    assert kept.status == Status.DISPATCHED and (kept.contact, kept.sender) == (PHONE, "wx:o-citizen")
    trail = [e.action for e in await store.events(t)]
    assert trail[-4:] == ["closed", "reopened", "confirmed", "dispatched"] and "personal_data_purged" not in trail
    assert result.purged == [done.case.id]  # the case that stayed closed is purged, the reopened one is not
    recipient = (await surveys.get(t)).recipients[MAIN]  # type: ignore[union-attr]
    assert (recipient.contact, recipient.sender) == (PHONE, "wx:o-citizen")
    lookup = await client.get(f"/api/v1/cases/{t}", params={"last4": PHONE[-4:]})
    assert lookup.status == 200
    assert [c.id for c in await store.caller_history(await store.get_case(done.case.id))] == []
    assert t in [c.id for c in await store.cases_of_callers(caller_keys(kept))]


async def closed_with_a_merged_report(client: TestClient) -> tuple[str, str, float]:
    """Two unrelated complaints, the first merged into the second by a call-taker, which is then closed: the
    report's id, the case's id and when the case was created."""
    intake = client.app[INTAKE]
    report = await intake.submit(InboundMessage(channel="api", sender="r", contact="13700007777",
                                                text="青年路口的红绿灯不亮了，路口很乱"))
    master = await intake.submit(InboundMessage(channel="api", sender="m", contact=PHONE,
                                                text="人民公园东门的长椅坏了好几张"))
    await client.app[DEDUP].confirm_merge(report.case.id, master.case.id, "staff:ct1")
    await close(client, master.case.id)
    return report.case.id, master.case.id, master.case.created_at


@pytest.mark.parametrize("change", ["master reopened", "merge undone"])
async def test_a_merged_report_keeps_its_number_when_its_master_reopens_or_the_merge_is_undone(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    store = client.app[STORE]
    r, t, _created_at = await closed_with_a_merged_report(client)
    assert (await store.get_case(r)).status == Status.MERGED

    async def undo() -> None:
        await client.app[DEDUP].unmerge(r, "staff:ct1")

    fired = interleave(monkeypatch, store, "write", r, (lambda: reopen(store, t)) if change == "master reopened"
                       else undo)
    result = await Retention(store, client.app[SETTINGS].data_dir, client.app[ATTACHMENTS]).purge(0)

    assert fired == ["write"]
    kept = await store.get_case(r)
    assert kept.contact == "13700007777" and kept.sender == "r"
    assert "personal_data_purged" not in [e.action for e in await store.events(r)]
    assert (await client.get(f"/api/v1/cases/{r}", params={"last4": "7777"})).status == 200
    assert r not in result.purged
    if change == "master reopened":
        # The report is listed first: its master was closed when it was read, and reopened before the write.
        master_now = await store.get_case(t)
        assert master_now.status == Status.DISPATCHED and master_now.contact == PHONE
        assert [rep.contact for rep in master_now.reports] == ["13700007777"] and result.purged == []
    else:
        assert kept.status == Status.CLASSIFIED and not kept.duplicate_of


async def test_a_closed_case_whose_survey_still_asks_is_left_for_a_later_run(client: TestClient) -> None:
    """A merged reporter who has not answered yet may still reopen the case (不满意): until the round is over
    the case, its reporters and the numbers to call stay."""
    store = client.app[STORE]
    r, t, created_at = await closed_with_a_merged_report(client)
    surveys = SurveyStore(store)
    await surveys.create(Survey(t, created_at, recipients={
        MAIN: Recipient(rid=MAIN, channel="api", sender="m", contact=PHONE, state="answered", resolved=True,
                        satisfaction="satisfied"),
        r: Recipient(rid=r, channel="api", sender="r", contact="13700007777", state=FOLLOWUP)}))
    retention = Retention(store, client.app[SETTINGS].data_dir, client.app[ATTACHMENTS])
    assert (await retention.purge(0, dry_run=True)).purged == []
    assert (await retention.purge(0)).purged == []
    assert (await store.get_case(t)).contact == PHONE and (await store.get_case(r)).contact == "13700007777"
    assert (await surveys.get(t)).recipients[r].contact == "13700007777"  # type: ignore[union-attr]

    def answered(rec: Recipient, _s: Survey) -> None:
        rec.state, rec.resolved, rec.satisfaction = "answered", True, "satisfied"

    await surveys.update(t, r, answered)
    assert sorted((await retention.purge(0)).purged) == sorted([r, t])
    assert (await store.get_case(t)).contact == "" and (await store.get_case(r)).contact == ""
    assert {rec.contact for rec in (await surveys.get(t)).recipients.values()} == {""}  # type: ignore[union-attr]
