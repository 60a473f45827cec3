"""Staff-side defects found in QA: audit wording, sessions after a password change, case-insensitive account
names and their login throttle, and 回访 of reports whose merge was undone or who were found unreachable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DEDUP, INTAKE, NOTIFICATIONS, STORE, SURVEYS
from hotline.console.event_text import describe
from hotline.records import InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store import Store
from hotline.store.surveys import FOLLOWUP, MAIN, UNREACHABLE, WITHDRAWN
from hotline.store.users import UserError, Users, hash_password
from hotline.surveys import KIND
from tests.conftest import make_settings
from tests.console_support import DEFAULT_PASSWORD, add_user, login_form, new_session, staff_login
from tests.dispatch_support import Open311Receiver, RecordingNotifier
from tests.test_callbacks_e2e import callback_settings, dispatch_and_resolve
from tests.test_console_queue import submit, suggest

BEIJING = ZoneInfo("Asia/Shanghai")


def cli_env(redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "HOTLINE_STORE__KEY_PREFIX": key_prefix,
            "HOTLINE_SERVER__DATA_DIR": str(tmp_path)}


async def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotline", "users", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env)
    out, err = await proc.communicate(stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# 1. audit wording ------------------------------------------------------------------------

def test_review_and_merge_details_have_no_english_keys_or_raw_actors() -> None:
    review = describe({"accepted": {"category": False, "department": True},
                       "changed": {"category": {"suggested": "城乡建设", "chosen": "劳动和社会保障"}}}, BEIJING)
    assert review == ("采纳 AI 建议（类别：否，承办部门：是）；"
                      "修改项（类别（AI 建议：城乡建设，采用：劳动和社会保障））")
    merged = describe({"into": "20261122-000001", "score": 0.0, "merged_by": "staff:ct2"}, BEIJING)
    assert merged == "并入案件：20261122-000001；相似度：0.00；合并方式：ct2（工作人员）"
    assert describe({"merged_by": "auto"}, BEIJING) == "合并方式：系统自动"


async def test_case_trail_words_a_correction_and_a_staff_merge(client: TestClient) -> None:
    store = client.app[STORE]
    master = await submit(client, "幸福小区东门下水道堵了，污水漫到路上", address="幸福小区东门")
    report = await submit(client, "公司拖欠三个月工资不发", contact="13900004444")
    await suggest(store, master)
    await suggest(store, report)
    async with staff_login(client, "call_taker", name="ct2") as staff:
        fix = await staff.post_json(f"/api/v1/console/cases/{master}/confirm",
                                    {"category": "劳动和社会保障", "department": "城乡建设局", "type": "投诉"})
        assert fix.status == 200, await fix.text()
        merged = await staff.post_json(f"/api/v1/console/cases/{report}/merge", {"into": master})
        assert merged.status == 200, await merged.text()
        master_trail = (await (await staff.get(f"/api/v1/console/cases/{master}")).json())["events"]
        report_trail = (await (await staff.get(f"/api/v1/console/cases/{report}")).json())["events"]
    review = next(e for e in master_trail if e["action"] == "ai_reviewed")
    assert "修改项（类别（AI 建议：城乡建设，采用：劳动和社会保障））" in review["details"]
    joined = next(e for e in master_trail if e["action"] == "report_merged")
    folded = next(e for e in report_trail if e["action"] == "merged")
    for event in (joined, folded):
        assert "合并方式：ct2（工作人员）" in event["details"], event["details"]
    for event in (*master_trail, *report_trail):
        for word in ("suggested", "chosen", "staff:"):
            assert word not in event["details"], event


# 2. a new password ends the user's sessions ------------------------------------------------

async def test_passwd_command_ends_every_session_of_the_user(client: TestClient, redis_server: EmbeddedRedis,
                                                             tmp_path: Path, key_prefix: str) -> None:
    store = client.app[STORE]
    await add_user(store, "wei", "call_taker")
    base = str(client.make_url("")).rstrip("/")
    env = cli_env(redis_server, tmp_path, key_prefix)
    async with new_session() as first, new_session() as second, \
            staff_login(client, "call_taker", name="bystander") as bystander:
        for browser in (first, second):  # two logins, e.g. two workstations
            assert (await login_form(browser, base, "wei", DEFAULT_PASSWORD)).status == 303
            assert (await browser.get(f"{base}/api/v1/console/me")).status == 200
        code, out, err = await run_cli(env, "passwd", "wei", stdin="a-brand-new-password\n")
        assert code == 0, err
        assert "wei" in out
        for browser in (first, second):
            stale = await browser.get(f"{base}/api/v1/console/me")
            assert stale.status == 401
            assert "登录已过期" in (await stale.json())["error"]["message"]
        assert (await bystander.get("/api/v1/console/me")).status == 200  # other accounts are untouched
    async with new_session() as again:
        assert (await login_form(again, base, "wei", DEFAULT_PASSWORD)).status == 401
        assert (await login_form(again, base, "wei", "a-brand-new-password")).status == 303
        assert (await again.get(f"{base}/api/v1/console/me")).status == 200
        # Replacing the account (a new password with it) ends the new session as well.
        await Users(store).add("wei", "follow_up", hash_password("third-password"), replace=True)
        assert (await again.get(f"{base}/api/v1/console/me")).status == 401


# 3. account names are case-insensitive -----------------------------------------------------

async def store_legacy_account(store: Store, name: str, role: str = "call_taker") -> None:
    """An account as stored before names were case-insensitive (add() would now refuse the twin)."""
    await store.r.hset(f"{store.p}:staff:user:{name}", mapping={
        "name": name, "role": role, "display_name": "", "pw": hash_password(DEFAULT_PASSWORD),
        "created_at": "1.000", "disabled": "0"})
    await store.r.sadd(f"{store.p}:staff:users", name)


async def test_a_name_differing_only_in_case_is_the_same_account(client: TestClient, redis_server: EmbeddedRedis,
                                                                 tmp_path: Path, key_prefix: str) -> None:
    store = client.app[STORE]
    users = Users(store)
    await add_user(store, "tmp1", "call_taker")
    with pytest.raises(UserError, match="已存在"):
        await users.add("Tmp1", "supervisor", hash_password("other-password"))
    with pytest.raises(UserError, match="已存在"):
        await users.add("TMP1", "supervisor", hash_password("other-password"), replace=True)
    code, _out, err = await run_cli(cli_env(redis_server, tmp_path, key_prefix), "add", "Tmp1", "--role",
                                    "supervisor", stdin="other-password\n")
    assert code == 1 and "tmp1 已存在" in err and "不区分大小写" in err
    assert [u.name for u in await users.all()] == ["tmp1"]
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as s:
        assert (await login_form(s, base, "TMP1", DEFAULT_PASSWORD)).status == 303
        me = await (await s.get(f"{base}/api/v1/console/me")).json()
        assert me["name"] == "tmp1"  # the audit actor keeps the stored spelling


async def test_wrong_tries_under_a_name_of_no_account_lock_out_no_real_account(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix,
                             console={"login_max_failures": 3, "login_ip_max_failures": 30, "login_window_s": 60})
    client = await aiohttp_client(create_app(settings))
    store = client.app[STORE]
    for name in ("Tmp1", "tmp1"):  # both stored before names were case-insensitive
        await store_legacy_account(store, name)
    await add_user(store, "wang", "call_taker")
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as s:
        for _ in range(4):
            assert (await login_form(s, base, "TMP1", "bad-password")).status in (401, 429)
        assert (await login_form(s, base, "TMP1", DEFAULT_PASSWORD)).status == 429  # throttled all the same
        # Tries in another case count against the account they reach.
        for _ in range(3):
            assert (await login_form(s, base, "WANG", "bad-password")).status == 401
        assert (await login_form(s, base, "wang", DEFAULT_PASSWORD)).status == 429
    for name in ("Tmp1", "tmp1"):  # each reached by its exact spelling, neither locked out
        async with new_session() as s:
            assert (await login_form(s, base, name, DEFAULT_PASSWORD)).status == 303, name


# 4. and 5. 回访 of an unmerged report, of an unreachable citizen --------------------------------

@pytest.fixture
async def survey_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                        receiver: Open311Receiver) -> TestClient:
    # With the dedup service on: these tests merge and unmerge reports.
    settings = callback_settings(redis_server, tmp_path, key_prefix, receiver.url, merging=True)
    return await aiohttp_client(create_app(settings))


async def merged_pair(client: TestClient, report_channel: str = "web") -> tuple[str, str]:
    """Case C and report D, D merged into C by a call-taker through the dedup service."""
    c = await client.app[INTAKE].submit(InboundMessage(
        channel="web", sender="13912345678", contact="13912345678", text="幸福小区3号楼下水道堵塞，污水漫到路上",
        address="幸福小区3号楼"))
    sender = "13700002222" if report_channel == "web" else "tg-90001"
    d = await client.app[INTAKE].submit(InboundMessage(
        channel=report_channel, sender=sender, contact="13700002222" if report_channel == "web" else "",
        text="幸福小区三号楼门口污水冒出来了，没法走路", address="幸福小区3号楼"))
    if d.case.status != Status.MERGED:
        await client.app[DEDUP].confirm_merge(d.case.id, c.case.id, "staff:ct1")
    case = await client.app[STORE].get_case(c.case.id)
    assert [r.report_id for r in case.reports] == [d.case.id]
    return c.case.id, d.case.id


async def test_unmerged_report_leaves_the_worklist_and_cannot_reopen_the_case(
        survey_client: TestClient, receiver: Open311Receiver) -> None:
    client, store, service = survey_client, survey_client.app[STORE], survey_client.app[SURVEYS]
    c, d = await merged_pair(client)
    case = await dispatch_and_resolve(client, receiver, c, "已疏通。")
    await service.schedule(case)
    await service.run_due()
    survey = await service.surveys.get(c)
    assert survey is not None and {r.state for r in survey.recipients.values()} == {FOLLOWUP}
    async with staff_login(client, "follow_up") as agent:
        listed = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert {(i["case_id"], i["rid"]) for i in listed} == {(c, MAIN), (c, d)}

        await client.app[DEDUP].unmerge(d, "staff:ct1")  # D is its own case again
        assert d not in [r.report_id for r in (await store.get_case(c)).reports]
        listed = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert {(i["case_id"], i["rid"]) for i in listed} == {(c, MAIN)}

        url = f"/api/v1/callbacks/{c}/{d}"
        answer = await agent.post_json(url, {"outcome": "answered", "resolved": False, "satisfaction": "unsatisfied"})
        assert answer.status == 409
        error = (await answer.json())["error"]
        assert error["code"] == "not_a_reporter" and "撤销合并" in error["message"]
        assert (await agent.post_json(url, {"outcome": "no_answer"})).status == 409
    case = await store.get_case(c)
    assert case.status == Status.RESOLVED and d not in case.survey.get("reports", {})
    assert receiver.orders_per_case()[c] == 1  # not re-dispatched
    actions = [e.action for e in await store.events(c)]
    assert "reopened" not in actions and "survey_answered" not in actions
    assert actions.count("survey_withdrawn") == 1
    survey = await service.surveys.get(c)
    assert survey is not None and survey.recipients[d].state == WITHDRAWN
    assert (await store.get_case(d)).status == Status.CLASSIFIED  # D itself is untouched, back in the queue


async def test_unmerged_chat_report_is_not_asked_about_the_case(survey_client: TestClient,
                                                                receiver: Open311Receiver) -> None:
    chat = RecordingNotifier()
    survey_client.app[NOTIFICATIONS].register("telegram", chat)
    service = survey_client.app[SURVEYS]
    c, d = await merged_pair(survey_client, report_channel="telegram")
    case = await dispatch_and_resolve(survey_client, receiver, c, "已疏通。")
    await service.schedule(case)
    await survey_client.app[DEDUP].unmerge(d, "staff:ct1")
    await service.run_due()
    assert [n for n in chat.sent if n.kind == KIND] == []
    survey = await service.surveys.get(c)
    assert survey is not None and survey.recipients[d].state == WITHDRAWN
    assert survey.recipients[MAIN].state == FOLLOWUP


async def test_answer_after_the_citizen_was_found_unreachable_is_refused(
        survey_client: TestClient, receiver: Open311Receiver) -> None:
    client, store, service = survey_client, survey_client.app[STORE], survey_client.app[SURVEYS]
    resp = await client.post("/api/v1/complaints", json={
        "text": "建设路路灯坏了一个星期，晚上一片漆黑", "contact": "13912340000", "channel": "web"})
    assert resp.status == 201, await resp.text()
    case_id = (await resp.json())["case_id"]
    case = await dispatch_and_resolve(client, receiver, case_id, "已更换灯泡。")
    await service.schedule(case)
    await service.run_due()
    url = f"/api/v1/callbacks/{case_id}/{MAIN}"
    async with staff_login(client, "follow_up") as agent:
        states = []
        for _ in range(3):  # callbacks.max_agent_attempts
            out = await agent.post_json(url, {"outcome": "no_answer"})
            assert out.status == 200
            states.append((await out.json())["state"])
        assert states == [FOLLOWUP, FOLLOWUP, UNREACHABLE]
        assert (await store.get_case(case_id)).status == Status.CLOSED  # closed without an evaluation

        late = await agent.post_json(url, {"outcome": "answered", "resolved": False, "satisfaction": "unsatisfied"})
        assert late.status == 409
        error = (await late.json())["error"]
        assert error["code"] == "survey_ended" and "联系不上" in error["message"]
        assert (await agent.post_json(url, {"outcome": "no_answer"})).status == 409
        # The citizen's own web link says the same.
        survey = await service.surveys.get(case_id)
        assert survey is not None
        link = service.link(case_id, MAIN, survey.round).split("/survey/", 1)[1]
        page = await client.post(f"/survey/{link}", data={"resolved": "no", "satisfaction": "unsatisfied"})
        assert page.status == 409 and "本次回访已结束" in await page.text()
        async with staff_login(client, "supervisor") as boss:
            boss_rates = await (await boss.get("/api/v1/metrics/rates?by=department")).json()
    case = await store.get_case(case_id)
    assert case.status == Status.CLOSED and "resolved" not in case.survey
    assert receiver.orders_per_case()[case_id] == 1
    actions = [e.action for e in await store.events(case_id)]
    assert "survey_answered" not in actions and "reopened" not in actions
    assert (await service.surveys.get(case_id)).recipients[MAIN].state == UNREACHABLE  # type: ignore[union-attr]
    assert boss_rates["total"]["surveyed"] == 0  # an unreachable citizen is not counted as surveyed

