"""The confirmation queue, confirm/correct/merge decisions, the case page, search, live events, masking, XSS."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.appkeys import DEDUP, STORE
from hotline.records import Case
from hotline.status import Status
from hotline.store import Store
from tests.console_support import staff_login

PHONE = "13812345678"


async def submit(client: TestClient, text: str, contact: str = PHONE, address: str = "") -> str:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact, "address": address})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["case_id"]


def top(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"top": [{"label": label, "p": p} for label, p in pairs]}


async def suggest(store: Store, case_id: str, **changes: Any) -> Case:
    """Give a case the classifier output the console shows (the shape hotline/classifier.py documents)."""
    def apply(c: Case) -> dict[str, Any]:
        c.suggestion = {
            "category": top(("城乡建设", 0.71), ("环境保护", 0.18), ("交通运输", 0.06)),
            "department": top(("城乡建设局", 0.66), ("环境保护局", 0.2), ("交通运输局", 0.1)),
            "type": top(("投诉", 0.8), ("求助", 0.15), ("咨询", 0.05)),
            "urgency": {"level": "normal", "reasons": [], "advice": ""},
            "needs_confirmation": True, "reasons": [], "model": "test-fixture",
        }
        for key, value in changes.items():
            setattr(c, key, value)
        return {}
    return await store.update_case(case_id, apply, actor="system", action="suggested")


async def test_queue_lists_emergencies_and_returned_orders_first(client: TestClient) -> None:
    store = client.app[STORE]
    first = await submit(client, "小区垃圾三天没人清运，气味很大")
    second = await submit(client, "楼道灯坏了", contact="13900001111")
    third = await submit(client, "燃气管道闻到很重的煤气味", contact="13900002222")
    await suggest(store, third, emergency=True)
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RETURNED):
        await store.update_case(second, lambda c: {}, actor="system", action=str(target), target=target)
    async with staff_login(client, "call_taker") as staff:
        resp = await staff.get("/api/v1/console/queue")
        ids = [i["id"] for i in (await resp.json())["items"]]
        assert ids[:3] == [third, second, first]
        items = {i["id"]: i for i in (await resp.json())["items"]}
        assert items[third]["emergency"] and items[second]["returned"]
        html = await (await staff.page("/console/queue")).text()
        assert html.index(third) < html.index(second) < html.index(first)
        assert "紧急" in html and "退单" in html


async def test_confirm_top_suggestion_dispatches_and_is_audited(client: TestClient) -> None:
    store = client.app[STORE]
    case_id = await submit(client, "幸福路路灯坏了一个星期", address="幸福路12号")
    await suggest(store, case_id)
    async with staff_login(client, "call_taker", name="xiaowang") as staff:
        frag = await (await staff.get(f"/console/queue/case/{case_id}")).text()
        assert 'data-category="城乡建设"' in frag and 'data-department="城乡建设局"' in frag and "71%" in frag
        body = {"category": "城乡建设", "department": "城乡建设局", "type": "投诉", "address": "幸福路12号"}
        resp = await staff.post_json(f"/api/v1/console/cases/{case_id}/confirm", body)
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        assert out["accepted"] == {"category": True, "department": True, "type": True}
        assert out["status"] in ("confirmed", "dispatched")
        again = await staff.post_json(f"/api/v1/console/cases/{case_id}/confirm", body)
        assert again.status == 409  # a second call-taker (or a double key press) cannot confirm twice
    case = await store.get_case(case_id)
    assert case.classification["department"] == "城乡建设局"
    assert case_id not in await store.confirm_queue()
    events = await store.events(case_id)
    confirmed = [e for e in events if e.action == "confirmed"]
    assert confirmed and confirmed[0].actor == "staff:xiaowang"
    review = [e for e in events if e.action == "ai_reviewed"]
    assert review[0].actor == "staff:xiaowang" and review[0].data["changed"] == {}


async def test_correction_is_stored_and_counts_against_adoption(client: TestClient) -> None:
    store = client.app[STORE]
    kept = await submit(client, "公园健身器材损坏")
    changed = await submit(client, "河道里有人倾倒建筑垃圾", contact="13900003333")
    await suggest(store, kept)
    await suggest(store, changed)
    async with staff_login(client, "call_taker", name="ct1") as staff:
        ok = await staff.post_json(f"/api/v1/console/cases/{kept}/confirm",
                                   {"category": "城乡建设", "department": "城乡建设局", "type": "投诉"})
        assert ok.status == 200, await ok.text()
        fix = await staff.post_json(f"/api/v1/console/cases/{changed}/confirm",
                                    {"category": "环境保护", "category_path": ["环境保护"], "department": "环境保护局",
                                     "co_departments": ["城乡建设局"], "type": "投诉"})
        assert fix.status == 200, await fix.text()
        assert (await fix.json())["accepted"] == {"category": False, "department": False, "type": True}
    case = await store.get_case(changed)
    assert case.classification["department"] == "环境保护局"
    assert case.classification["co_departments"] == ["城乡建设局"]
    review = next(e for e in await store.events(changed) if e.action == "ai_reviewed")
    assert review.data["changed"]["department"] == {"suggested": "城乡建设局", "chosen": "环境保护局"}
    rows = await store.r.xrange(f"{store.p}:nlp:corrections")
    by_case = {f["case_id"]: json.loads(f["labels"]) for _id, f in rows}
    assert by_case[changed]["department"] == "环境保护局" and by_case[kept]["department"] == "城乡建设局"

    async with staff_login(client, "supervisor") as boss:
        data = await (await boss.get("/api/v1/console/metrics/adoption")).json()
        assert data["heads"]["department"] == {"reviewed": 2, "accepted": 1, "rate": 0.5}
        assert data["heads"]["type"] == {"reviewed": 2, "accepted": 2, "rate": 1.0}
        assert data["users"]["ct1"] == {"reviewed": 2, "accepted": 1, "rate": 0.5}
        page = await (await boss.page("/console/metrics")).text()
        assert "50.0%" in page and "ct1" in page
        # Days at the ends of the calendar: a day or a week away from them is out of range.
        for query in ("from=2026-13-01", "from=9999-12-31&to=9999-12-31", "to=0001-01-01",
                      "from=0001-01-01&to=0001-01-01"):
            bad = await boss.get(f"/api/v1/console/metrics/adoption?{query}")
            assert bad.status == 400, query
            assert (await bad.json())["error"]["code"] == "bad_date"


async def test_confirm_input_is_checked(client: TestClient) -> None:
    store = client.app[STORE]
    case_id = await submit(client, "噪音扰民，夜里施工")
    await suggest(store, case_id)
    url = f"/api/v1/console/cases/{case_id}/confirm"
    async with staff_login(client, "call_taker") as staff:
        cases = [
            ({"department": "城乡建设局"}, 422, "bad_classification"),
            ({"category": "城乡建设", "department": "不存在的局"}, 422, "unknown_department"),
            ({"category": "没有的类别", "department": "城乡建设局"}, 422, "unknown_category"),
            ({"category": "城乡建设", "department": "城乡建设局", "co_departments": ["教育局"] * 6}, 422,
             "bad_classification"),
            ({"category": "城乡建设", "department": 7}, 422, "bad_classification"),
            ({"category": "城乡建设", "category_path": ["城乡建设", "乱写"], "department": "城乡建设局"}, 422,
             "unknown_category"),
            ({"category": "城乡建设", "department": "城乡建设局", "address": "x" * 600}, 422, "bad_classification"),
        ]
        for body, status, code in cases:
            resp = await staff.post_json(url, body)
            assert resp.status == status, (body, await resp.text())
            assert (await resp.json())["error"]["code"] == code
        raw = await staff.request("POST", url, data=b"{not json", headers={"Content-Type": "application/json"})
        assert raw.status == 400
        missing = await staff.post_json("/api/v1/console/cases/20200101-999999/confirm",
                                        {"category": "城乡建设", "department": "城乡建设局"})
        assert missing.status == 404
        assert (await staff.get("/console/queue/case/..%2F..%2Fetc")).status == 404
    assert (await store.get_case(case_id)).status == Status.CLASSIFIED


async def test_reject_merge_unmerge_through_the_dedup_service(client: TestClient) -> None:
    store = client.app[STORE]
    master = await submit(client, "幸福小区东门下水道堵了，污水漫到路上", address="幸福小区东门")
    report = await submit(client, "幸福小区东门口污水冒出来了，没法走路", contact="13900004444", address="幸福小区东门")
    other = await submit(client, "学校门口红绿灯不亮", contact="13900005555")
    if (await store.get_case(report)).status == Status.MERGED:
        # The matcher was sure enough to merge on its own: undo it, this test wants a suggestion.
        await client.app[DEDUP].unmerge(report, "system")
    cands = [{"case_id": master, "score": 0.62, "reasons": ["text 0.58", "same_place"]},
             {"case_id": other, "score": 0.41, "reasons": []}]
    await suggest(store, report, duplicate_candidates=cands)
    async with staff_login(client, "call_taker", name="ct2") as staff:
        frag = await (await staff.get(f"/console/queue/case/{report}")).text()
        assert "疑似重复" in frag and "学校门口红绿灯不亮" in frag  # the candidate's text side by side
        assert "依据：文字相似度 0.58、同一地点" in frag  # why the matcher paired them
        rej = await staff.post_json(f"/api/v1/console/cases/{report}/reject-duplicate", {"candidate": other})
        assert rej.status == 200, await rej.text()
        assert (await rej.json())["duplicate_candidates"] == [master]
        bad = await staff.post_json(f"/api/v1/console/cases/{report}/merge", {"into": 5})
        assert bad.status == 422
        merged = await staff.post_json(f"/api/v1/console/cases/{report}/merge", {"into": master})
        assert merged.status == 200, await merged.text()
        assert (await merged.json())["duplicate_of"] == master
        page = await (await staff.page(f"/console/cases/{master}")).text()
        assert report in page and "139****4444" in page and "13900004444" not in page  # the merged report
        undo = await staff.post_json(f"/api/v1/console/cases/{report}/unmerge", {})
        assert undo.status == 200, await undo.text()
    events = {e.action: e for e in await store.events(report)}
    assert events["duplicate_rejected"].actor == "staff:ct2"
    assert events["merged"].actor == "staff:ct2"
    assert events["unmerged"].actor == "staff:ct2"
    assert (await store.get_case(report)).status == Status.CLASSIFIED


async def test_case_page_shows_history_with_names_and_masks_by_role(client: TestClient) -> None:
    store = client.app[STORE]
    case_id = await submit(client, "我的身份证号110101199003071234，电话13912345678，门口路面塌陷")
    await suggest(store, case_id)
    async with staff_login(client, "call_taker", name="ct3") as staff:
        ok = await staff.post_json(f"/api/v1/console/cases/{case_id}/confirm",
                                   {"category": "城乡建设", "department": "城乡建设局"})
        assert ok.status == 200
        html = await (await staff.page(f"/console/cases/{case_id}")).text()
        assert "ct3（工作人员）" in html and "人工确认" in html
        # The trail reads as words (渠道：接口), with the raw data kept in the cell's title for auditors.
        cells = re.findall(r'<td class="data" title="([^"]*)">([^<]*)</td>', html)
        assert cells and all("{" not in shown for _raw, shown in cells)
        assert "渠道：接口" in html and "承办部门：城乡建设局" in html and "&#34;channel&#34;" in html
        assert "138****5678" in html and PHONE not in html
        assert "110101199003071234" not in html and "13912345678" not in html  # numbers inside the text too
        data = await (await staff.get(f"/api/v1/console/cases/{case_id}")).json()
        assert data["contact"] == "138****5678" and data["classification"]["department"] == "城乡建设局"
    for target in (Status.DISPATCHED, Status.RESOLVED):
        case = await store.get_case(case_id)
        if case.status != target:
            await store.update_case(case_id, lambda c: {}, actor="system", action=str(target), target=target)
    async with staff_login(client, "follow_up", name="fu1") as agent:
        html = await (await agent.page(f"/console/cases/{case_id}")).text()
        assert PHONE in html  # the follow-up agent calls this citizen back
    viewed = [e for e in await store.events(case_id) if e.action == "phone_viewed"]
    assert viewed and viewed[0].actor == "staff:fu1"
    async with staff_login(client, "supervisor") as boss:
        assert PHONE not in await (await boss.page(f"/console/cases/{case_id}")).text()


async def test_search_by_number_phone_text_status_department(client: TestClient) -> None:
    store = client.app[STORE]
    a = await submit(client, "人民路井盖松动", contact="13700001234")
    b = await submit(client, "解放路路灯不亮", contact="13700005678")
    await suggest(store, b)
    async with staff_login(client, "call_taker") as staff:
        assert (await staff.post_json(f"/api/v1/console/cases/{b}/confirm",
                                      {"category": "城乡建设", "department": "城乡建设局"})).status == 200

        async def ids(query: str) -> list[str]:
            resp = await staff.get(f"/api/v1/console/search?{query}")
            assert resp.status == 200, await resp.text()
            return [r["id"] for r in (await resp.json())["results"]]

        assert await ids(f"q={a}") == [a]
        assert await ids("q=13700001234") == [a]
        assert await ids("q=%E4%BA%95%E7%9B%96") == [a]  # 井盖
        assert await ids("status=classified") == [a]
        assert b in await ids("department=%E5%9F%8E%E4%B9%A1")  # 城乡
        assert await ids("department=%E6%B2%A1%E6%9C%89%E7%9A%84%E5%B1%80") == []  # 没有的局
        assert await ids("q=%E4%BA%95%E7%9B%96&from=2001-01-01&to=2001-01-02") == []
        found = await (await staff.get("/api/v1/console/search?q=13700001234")).json()
        assert found["results"][0]["contact"] == "137****1234"
        assert (await staff.get("/api/v1/console/search?status=nope")).status == 400
        assert (await staff.get("/api/v1/console/search?from=yesterday")).status == 400
        for query in ("from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=0001-01-01"):
            assert (await staff.get(f"/api/v1/console/search?{query}")).status == 400, query
        page = await (await staff.page("/console/search?q=13700005678")).text()
        assert b in page and "137****5678" in page and "13700005678\"" not in page.split("<tbody>")[1]


async def test_citizen_script_is_shown_as_text_everywhere(client: TestClient) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>路灯坏了"
    case_id = await submit(client, evil, address="<b>幸福路</b>")
    async with staff_login(client, "supervisor") as staff:
        for path in ("/console/queue", "/console/queue/list", f"/console/queue/case/{case_id}",
                     f"/console/cases/{case_id}", "/console/search?q=%E8%B7%AF%E7%81%AF"):
            html = await (await staff.page(path)).text()
            assert case_id in html, path
            assert "<script>alert(1)" not in html and "<img src=x" not in html and "<b>幸福路" not in html, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


async def test_live_events_arrive_for_new_complaints(client: TestClient) -> None:
    async with staff_login(client, "call_taker") as staff, staff.session.get(staff.url("/api/v1/console/live")) \
            as stream:
            assert stream.status == 200
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(stream.content.readline(), 5)
            assert first.startswith(b"retry:")
            case_id = await submit(client, "公交站牌被撞坏了")

            async def read_until_case() -> str:
                while True:
                    line = (await stream.content.readline()).decode()
                    if line.startswith("data:") and case_id in line:
                        return line
            seen = await asyncio.wait_for(read_until_case(), 5)
            data = json.loads(seen[5:])
            assert data["case"] == case_id and data["action"] == "created"
            assert PHONE not in seen  # live events carry ids, never personal data


async def test_catalog_serves_the_category_tree_and_departments(client: TestClient) -> None:
    async with staff_login(client, "call_taker") as staff:
        data = await (await staff.get("/api/v1/console/catalog")).json()
    paths = {tuple(c["path"]) for c in data["categories"]}
    assert ("城乡建设",) in paths
    assert any(len(p) == 3 for p in paths)
    assert "城乡建设局" in data["departments"]
    assert data["default_department"]["城乡建设"] == "城乡建设局"
    assert "投诉" in data["types"]


async def test_emergency_banner_names_the_rule_in_chinese(client: TestClient) -> None:
    case_id = await submit(client, "楼道里燃气泄漏，闻到很重的煤气味，邻居家没人")
    case = await client.app[STORE].get_case(case_id)
    assert case.emergency and case.suggestion["urgency"]["reasons"][0].startswith("gas_leak:")
    async with staff_login(client, "call_taker") as staff:
        frag = await (await staff.get(f"/console/queue/case/{case_id}")).text()
        assert "燃气泄漏" in frag and "gas_leak" not in frag and "119" in frag


async def test_call_taker_sees_the_same_citizens_other_cases(client: TestClient) -> None:
    first = await submit(client, "幸福小区3栋楼道灯不亮", contact="13700007777")
    second = await submit(client, "幸福小区垃圾桶满了没人清", contact="137-0000-7777")  # same phone, other format
    other = await submit(client, "和平路有井盖松动", contact="13900008888")
    third = await submit(client, "幸福小区门口停车乱收费", contact="13700007777")
    async with staff_login(client, "call_taker") as staff:
        frag = await (await staff.get(f"/console/queue/case/{third}")).text()
        assert "该市民的其他诉求（2）" in frag
        assert frag.index(second) < frag.index(first) and other not in frag
        data = await (await staff.get(f"/api/v1/console/cases/{third}")).json()
        assert [h["id"] for h in data["caller_history"]] == [second, first]
        assert "13700007777" not in json.dumps(data["caller_history"])
        lone = await (await staff.get(f"/api/v1/console/cases/{other}")).json()
        assert lone["caller_history"] == []
