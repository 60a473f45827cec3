"""Prometheus metrics at ``/metrics`` (text exposition format, every name prefixed ``hotline_``).

Each app has its own ``CollectorRegistry``: several apps live in one test process (and one process may
host more than one app), and the global default registry would make their metrics clash.

Counters and the latency histogram are counted in this process. Numbers that live in Redis (cases by
status, outbox depth, dead letters, surveys) are read from the store when Prometheus scrapes, so every
process of a scaled-out deployment reports the same, current values; a scrape while Redis is away
answers ``hotline_store_up 0`` instead of failing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from redis.exceptions import RedisError

from hotline.appkeys import CLASSIFIER, INTAKE, SETTINGS, STORE, STT
from hotline.limits import address_allowed
from hotline.records import Case
from hotline.store import StoreUnavailable
from hotline.store.outbox import Outbox
from hotline.store.surveys import SurveyStore

log = logging.getLogger("hotline.metrics")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Classification runs in the event loop and must stay in the low milliseconds.
CLASSIFY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    cases_created: Counter
    classify_seconds: Histogram
    store_up: Gauge
    cases_by_status: Gauge
    cases_total: Gauge
    outbox: Gauge
    dead_letters: Gauge
    surveys: Gauge
    models_loaded: Gauge
    stt_audio: Gauge
    stt_decode: Gauge
    stt_rtf: Gauge
    stt_recognizers: Gauge
    gc_frozen: Gauge

    @classmethod
    def create(cls) -> Metrics:
        reg = CollectorRegistry(auto_describe=True)
        return cls(
            registry=reg,
            requests=Counter("hotline_http_requests", "HTTP requests answered, by route and status.",
                             ["method", "route", "status"], registry=reg),
            request_seconds=Histogram("hotline_http_request_duration_seconds", "Time to answer an HTTP request.",
                                      ["route"], buckets=HTTP_BUCKETS, registry=reg),
            cases_created=Counter("hotline_cases_created", "Cases created by this process, by channel.",
                                  ["channel"], registry=reg),
            classify_seconds=Histogram("hotline_classification_seconds", "Time of one classifier suggestion.",
                                       buckets=CLASSIFY_BUCKETS, registry=reg),
            store_up=Gauge("hotline_store_up", "1 when Redis answered the last scrape.", registry=reg),
            cases_by_status=Gauge("hotline_cases", "Cases in the store, by status.", ["status"], registry=reg),
            cases_total=Gauge("hotline_cases_all", "All cases in the store.", registry=reg),
            outbox=Gauge("hotline_dispatch_outbox", "Dispatch outbox by state (waiting, pending, retrying, "
                         "open_orders).", ["state"], registry=reg),
            dead_letters=Gauge("hotline_dispatch_dead_letters", "Work orders in the dead-letter stream.",
                               registry=reg),
            surveys=Gauge("hotline_surveys", "Satisfaction surveys by queue (due, followup).", ["queue"],
                          registry=reg),
            models_loaded=Gauge("hotline_model_loaded", "1 when a model is loaded (classifier, stt).", ["model"],
                                registry=reg),
            stt_audio=Gauge("hotline_stt_audio_seconds", "Seconds of audio the speech engine was fed since start.",
                            registry=reg),
            stt_decode=Gauge("hotline_stt_decode_seconds", "Seconds the speech engine spent decoding since start.",
                             registry=reg),
            stt_rtf=Gauge("hotline_stt_real_time_factor",
                          "Decoding time per second of audio since start (below 1: faster than real time).",
                          registry=reg),
            stt_recognizers=Gauge("hotline_stt_recognizers",
                                  "Speech recognizers: created and reused since start, warm (kept for the next "
                                  "stream) now.", ["kind"], registry=reg),
            gc_frozen=Gauge("hotline_gc_frozen_objects",
                            "Objects loaded at start-up that the cyclic garbage collector no longer walks.",
                            registry=reg),
        )

    async def refresh(self, app: web.Application) -> None:
        """Read the store-held numbers; called at scrape time."""
        store = app.get(STORE)
        classifier = app.get(CLASSIFIER)
        self.models_loaded.labels("classifier").set(
            1 if classifier is not None and getattr(classifier, "name", "none") != "none" else 0)
        stt = app.get(STT)
        self.models_loaded.labels("stt").set(1 if stt is not None else 0)
        audio_s = float(getattr(stt, "audio_seconds", 0.0))
        decode_s = float(getattr(stt, "decode_seconds", 0.0))
        self.stt_audio.set(audio_s)
        self.stt_decode.set(decode_s)
        self.stt_rtf.set(decode_s / audio_s if audio_s else 0.0)
        for kind, value in (("created", getattr(stt, "recognizers_created", 0)),
                            ("reused", getattr(stt, "recognizers_reused", 0)), ("warm", getattr(stt, "warm", 0))):
            self.stt_recognizers.labels(kind).set(value)
        self.gc_frozen.set(gc.get_freeze_count())
        if store is None:
            self.store_up.set(0)
            return
        try:
            total, by_status = await store.counts()
            stats = await Outbox(store).stats()
            surveys = await SurveyStore(store).counts()
        except (*StoreUnavailable, RedisError):
            self.store_up.set(0)
            return
        self.store_up.set(1)
        self.cases_total.set(total)
        for status, n in by_status.items():
            self.cases_by_status.labels(status.value).set(n)
        for state, key in (("waiting", "outbox"), ("pending", "pending"), ("retrying", "retrying"),
                           ("open_orders", "open_orders")):
            self.outbox.labels(state).set(stats[key])
        self.dead_letters.set(stats["dead"])
        for queue, n in surveys.items():
            self.surveys.labels(queue).set(n)


METRICS = web.AppKey("metrics", Metrics)


class TimedClassifier:
    """Wraps the intake's classifier to time every suggestion; everything else is passed through."""

    def __init__(self, inner: Any, histogram: Histogram) -> None:
        self._inner = inner
        self._histogram = histogram
        self.name = inner.name

    def suggest(self, text: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return self._inner.suggest(text)
        finally:
            self._histogram.observe(time.perf_counter() - t0)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._inner, item)


def route_label(request: web.Request) -> str:
    """The route's pattern, never the raw path: ids in paths would make one series per case."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's convention), not a server error
        raise
    finally:
        metrics = request.app.get(METRICS)
        if metrics is not None:
            route = route_label(request)
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)


def _allowed(request: web.Request) -> bool:
    """``[metrics] allow`` holds against the client as the PBX endpoints judge it: behind
    ``limits.trusted_proxies`` the forwarded client, not the proxy on loopback that relays everyone."""
    nets = request.app[SETTINGS]["metrics"]["allow"]
    if not nets:
        return True
    return address_allowed(request, nets)


async def metrics_handler(request: web.Request) -> web.Response:
    if not _allowed(request):
        raise web.HTTPForbidden(text="禁止访问。")
    metrics = request.app[METRICS]
    await metrics.refresh(request.app)
    # The scraper's Accept header picks the text or the OpenMetrics format.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    intake = app[INTAKE]
    intake.classifier = TimedClassifier(intake.classifier, metrics.classify_seconds)

    async def count_created(case: Case) -> None:
        metrics.cases_created.labels(case.channel).inc()

    intake.on_created.append(count_created)
    yield


def setup(app: web.Application) -> None:
    app[METRICS] = Metrics.create()
    # Outermost, so that it sees the status the client got (after errors became error pages).
    app.middlewares.insert(0, metrics_middleware)
    app.cleanup_ctx.append(metrics_ctx)
    app.router.add_get("/metrics", metrics_handler)
