"""Personal data leaves old closed cases: phone, name, sender, photos, recording, caller index; the rest stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aiohttp.test_utils import TestClient

from hotline.appkeys import ATTACHMENTS, INTAKE, SETTINGS, STORE
from hotline.attachments import name_of
from hotline.records import Case, InboundMessage
from hotline.retention import Retention
from hotline.status import Status
from hotline.store.surveys import Recipient, Survey, SurveyStore
from tests.test_attachments import form, png

PHONE = "13812345678"


async def close(client: TestClient, case_id: str) -> None:
    store = client.app[STORE]
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED, Status.CLOSED):
        await store.update_case(case_id, lambda c: {}, actor="system", action=str(target), target=target)


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
