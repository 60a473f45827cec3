"""保密: a citizen may keep their identity from the handling units, through every door that asks.

The web form, the JSON API and the call-taker's 人工受理 page take the request; the case keeps the contact
for the hotline's own callbacks; the work order that reaches the department's system has no name, number or
recording (tests/test_dispatch_units.py checks the order itself). Real app, real receiver on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, wait_for
from tests.test_dispatch_app import dispatch_settings

PHONE = "13812345678"


async def test_each_door_takes_the_request(client: TestClient) -> None:
    store = client.app[STORE]
    resp = await client.post("/api/v1/complaints", json={"text": "举报楼下餐馆油烟直排", "contact": PHONE,
                                                         "confidential": True})
    assert resp.status == 201
    api_case = await store.get_case((await resp.json())["case_id"])
    resp = await client.post("/api/v1/complaints", json={"text": "举报楼下餐馆油烟直排", "confidential": "yes"})
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "bad_field"

    form = aiohttp.FormData()
    for key, value in (("text", "举报工地夜间施工"), ("contact", PHONE), ("confidential", "1"), ("form_token", "c-1")):
        form.add_field(key, value)
    resp = await client.post("/submit", data=form)
    assert resp.status == 201
    ids = sorted(await store.case_ids(offset=0, limit=10))
    form_case = await store.get_case(ids[-1])
    plain = aiohttp.FormData()
    for key, value in (("text", "举报工地夜间施工噪音"), ("contact", "13900001111"), ("form_token", "c-2")):
        plain.add_field(key, value)
    assert (await client.post("/submit", data=plain)).status == 201
    plain_case = await store.get_case(sorted(await store.case_ids(offset=0, limit=10))[-1])

    async with staff_login(client, "call_taker") as staff:
        made = await (await staff.post_json("/api/v1/console/intake", {
            "phone": PHONE, "text": "举报小区门口违规停车收费", "confidential": True})).json()
        bad = await staff.post_json("/api/v1/console/intake", {"text": "路灯坏了", "confidential": 1})
        assert bad.status == 422
        page = await (await staff.page(f"/console/cases/{made['case_id']}")).text()
    call_case = await store.get_case(made["case_id"])
    assert api_case.confidential and form_case.confidential and call_case.confidential
    assert not plain_case.confidential
    assert api_case.contact == PHONE and call_case.contact == PHONE  # kept for the hotline's callbacks
    assert 'id="case-confidential"' in page


async def test_the_department_never_receives_who_complained(aiohttp_client: Any, redis_server: Any,
                                                            tmp_path: Path, key_prefix: str,
                                                            receiver: Open311Receiver) -> None:
    client = await aiohttp_client(create_app(dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)))
    resp = await client.post("/api/v1/complaints", json={
        "text": f"举报邻居在楼道私拉电线充电，我的电话{PHONE}", "contact": PHONE, "name": "李四",
        "address": "幸福小区3栋", "confidential": True})
    case_id = (await resp.json())["case_id"]
    await client.app[DISPATCHER].confirm(case_id, CLASSIFICATION, "staff:a")
    await wait_for(lambda: any(o.key.startswith(case_id) for o in receiver.orders))
    sent = json.dumps([o.__dict__ for o in receiver.orders if o.key.startswith(case_id)], ensure_ascii=False,
                      default=str)
    assert PHONE not in sent and "李四" not in sent and "私拉电线" in sent
    assert (await client.app[STORE].get_case(case_id)).contact == PHONE
    # The unit can tell a withheld contact from one never given.
    order = next(o for o in receiver.orders if o.key.startswith(case_id))
    assert order.form.get("attribute[confidential]") == "1", order.form
