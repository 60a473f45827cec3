"""/metrics in Prometheus text format and /readyz, on the whole app with the real embedded Valkey."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.metrics import METRICS, Metrics
from hotline.redis_server import EmbeddedRedis
from hotline.store import Store
from tests.conftest import make_settings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data: dict, name: str, **labels: str) -> float:
    return data[(name, tuple(sorted(labels.items())))]


async def scrape(client: TestClient) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    text = await resp.text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names and all(n.startswith("hotline_") for n in names), names
    return samples(text)


async def test_metrics_count_requests_cases_and_store_state(client: TestClient) -> None:
    before = await scrape(client)
    assert value(before, "hotline_store_up") == 1
    assert value(before, "hotline_cases_all") == 0

    for text in ("幸福小区3栋门口路灯坏了一周，晚上很黑", "小区噪音扰民，每晚施工到凌晨"):
        resp = await client.post("/api/v1/complaints", json={"text": text, "channel": "api"})
        assert resp.status == 201
    resp = await client.post("/submit", data={"text": "井盖丢失，路人容易掉下去", "form_token": "m1"})
    assert resp.status == 201
    assert (await client.post("/api/v1/complaints", json={"text": ""})).status == 422
    assert (await client.get("/no/such/page/12345")).status == 404

    after = await scrape(client)
    assert value(after, "hotline_cases_created_total", channel="api") == 2
    assert value(after, "hotline_cases_created_total", channel="web") == 1
    assert value(after, "hotline_cases_all") == 3
    assert value(after, "hotline_cases", status="classified") == 3
    assert value(after, "hotline_cases", status="closed") == 0
    assert value(after, "hotline_classification_seconds_count") == 3
    assert value(after, "hotline_classification_seconds_sum") > 0
    assert value(after, "hotline_http_requests_total", method="POST", route="/api/v1/complaints",
                 status="201") == 2
    assert value(after, "hotline_http_requests_total", method="POST", route="/api/v1/complaints",
                 status="422") == 1
    assert value(after, "hotline_http_requests_total", method="POST", route="/submit", status="201") == 1
    # Unknown paths are one series, not one per path someone tried.
    assert value(after, "hotline_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not any("12345" in str(labels) for _name, labels in after)
    # The earlier scrape itself was counted.
    assert value(after, "hotline_http_requests_total", method="GET", route="/metrics", status="200") == 1
    for state in ("waiting", "pending", "retrying", "open_orders"):
        assert value(after, "hotline_dispatch_outbox", state=state) >= 0
    assert value(after, "hotline_dispatch_dead_letters") == 0
    assert value(after, "hotline_surveys", queue="due") == 0
    assert value(after, "hotline_surveys", queue="followup") == 0
    assert ("hotline_model_loaded", (("model", "classifier"),)) in after


async def test_dead_letters_are_read_from_the_store(client: TestClient) -> None:
    store = client.app[STORE]
    await store.r.xadd(f"{store.p}:dispatch:dead", {"key": "k1", "case": "x", "order": "{}"})
    await store.r.xadd(f"{store.p}:dispatch:dead", {"key": "k2", "case": "y", "order": "{}"})
    data = await scrape(client)
    assert value(data, "hotline_dispatch_dead_letters") == 2


async def test_two_apps_in_one_process_have_separate_registries(aiohttp_client, settings, tmp_path: Path) -> None:
    c1 = await aiohttp_client(create_app(settings))
    c2 = await aiohttp_client(create_app(make_settings(settings["store"]["redis_url"], tmp_path / "b",
                                                       settings["store"]["key_prefix"])))
    assert c1.app[METRICS].registry is not c2.app[METRICS].registry
    await c1.get("/healthz")
    d1, d2 = await scrape(c1), await scrape(c2)
    assert value(d1, "hotline_http_requests_total", method="GET", route="/healthz", status="200") == 1
    assert ("hotline_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200"))) not in d2


async def test_metrics_refused_outside_the_allow_list(aiohttp_client, redis_server: EmbeddedRedis,
                                                      tmp_path: Path, key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, metrics={"allow": ["10.0.0.0/8"]})
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/metrics")
    assert resp.status == 403
    assert "hotline_" not in await resp.text()


async def test_metrics_judge_the_forwarded_client_behind_a_trusted_proxy(
        aiohttp_client, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    # The reverse proxy on loopback relays everyone: the allow list must judge the client it names, as the PBX
    # endpoints do, not the proxy's own address.
    settings = make_settings(redis_server.url, tmp_path, key_prefix, limits={"trusted_proxies": ["127.0.0.1/32"]},
                             metrics={"allow": ["127.0.0.1/32", "10.0.0.0/8"]})
    client = await aiohttp_client(create_app(settings))
    for xff in ("203.0.113.9", "10.0.0.7, 203.0.113.9", "not-an-address", "10.0.0.7, junk"):
        resp = await client.get("/metrics", headers={"X-Forwarded-For": xff})
        assert resp.status == 403, xff
        assert "hotline_" not in await resp.text()
        assert (await client.get("/ivr/calls/abc/action", headers={"X-Forwarded-For": xff})).status == 403
    # A scraper in the allowed network behind the proxy, and one on this host without a proxy.
    assert (await client.get("/metrics", headers={"X-Forwarded-For": "10.0.0.7"})).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_scrape_with_redis_away_reports_store_down() -> None:
    # A port nothing listens on: the scrape must still answer, with hotline_store_up 0.
    dead = Store.from_url("redis://127.0.0.1:1/0")
    metrics = Metrics.create()
    try:
        await metrics.refresh({STORE: dead})  # type: ignore[arg-type]
    finally:
        await dead.close()
    from prometheus_client import generate_latest

    data = samples(generate_latest(metrics.registry).decode())
    assert value(data, "hotline_store_up") == 0


async def test_readyz_reports_models(client: TestClient) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = json.loads(await resp.text())
    assert body["redis"] is True
    assert set(body["models"]) == {"classifier", "stt"}
    assert body["models"]["classifier"] == (body["classifier"] != "none")
    assert isinstance(body["models"]["stt"], bool)
