"""The aiohttp application factory: state in typed AppKeys, resources in cleanup contexts."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from hotline.appkeys import CLASSIFIER, INTAKE, NOTIFICATIONS, SETTINGS, STORE, STT, TEMPLATES
from hotline.channels import web as web_channel
from hotline.classifier import load_classifier
from hotline.console.auth import auth_middleware
from hotline.errors import ApiError
from hotline.intake import Intake
from hotline.notify import Notifications
from hotline.pages import STATIC_DIR, make_environment, render
from hotline.redis_server import EmbeddedRedis
from hotline.settings import Settings
from hotline.store import Store, StoreUnavailable
from hotline.store.cases import STORE_REFUSED_MESSAGE, store_refused

log = logging.getLogger("hotline.app")

# Capabilities plugged into the app, in order. Each module has ``setup(app)`` that adds its routes
# and cleanup contexts; those run after the store and the pipeline are up.
FEATURE_MODULES = [
    "hotline.channels.web",
    "hotline.callbacks",
    "hotline.channels.wechat",
    "hotline.channels.telegram",
    "hotline.dedup",
    "hotline.channels.hotspots_api",
    "hotline.channels.answers_api",
    "hotline.console.feature",
    "hotline.ivr.feature",
    "hotline.dispatch.feature",
    "hotline.channels.open311",
    "hotline.metrics",
    "hotline.limits",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


def wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/api/", "/open311/")) or request.path in ("/healthz", "/readyz")


def error_response(request: web.Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    if request.path.startswith("/open311/"):
        # Third-party apps parse the GeoReport error list on every answer of that door (README: Open311).
        return web.json_response([{"code": status, "description": message}], status=status, headers=headers,
                                 dumps=web_channel.dumps)
    if wants_json(request):
        return web.json_response({"error": {"code": code, "message": message}}, status=status,
                                 headers=headers, dumps=web_channel.dumps)
    resp = render(request, "error.html", status=status, code=code, message=message)
    if headers:
        resp.headers.update(headers)
    return resp


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
               422: "unprocessable", 429: "too_many_requests"}
# What citizens read instead of aiohttp's English ("405: Method Not Allowed").
_HTTP_MESSAGES = {400: "请求内容不正确。", 401: "请先登录。", 403: "没有权限访问。", 404: "未找到。",
                  405: "不支持该请求方式。", 413: "请求内容过大。", 415: "不支持该请求内容类型。",
                  422: "请求内容无法处理。", 429: "请求过于频繁，请稍后再试。", 500: "系统内部错误，请稍后再试。",
                  503: "服务暂时繁忙，请稍后再试。"}
# A page opened by address that only takes a submitted form (GET /submit after a reload or from history).
_PAGE_405 = "此页面不能直接打开，请返回首页重新填写并提交。"


def http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    """The service's own Chinese text of ``exc`` when a handler gave one, else a Chinese one for its status:
    aiohttp's texts ("405: Method Not Allowed", "Maximum request body size … exceeded") are English."""
    if exc.status == 413:
        return _HTTP_MESSAGES[413]
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        if not wants_json(request):
            return _PAGE_405
        return f"不支持 {request.method[:10]} 请求方式" + (f"（可用：{allowed}）。" if allowed else "。")
    if exc.text and not exc.text.isascii():
        return exc.text
    return _HTTP_MESSAGES.get(exc.status, "请求无法处理。")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = "未找到。" if exc.status == 404 else http_error_message(request, exc)
        # 405 must keep its Allow header (RFC 9110), a 429/503 its Retry-After.
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(request, exc.status, code, message, kept or None)
    except StoreUnavailable:
        log.error("store unavailable", extra={"event": "store_unavailable", "path": request.path})
        return error_response(request, 503, "unavailable", "服务暂时繁忙，请稍后再试。", {"Retry-After": "5"})
    except RedisError as exc:
        # A running server that refuses writes it cannot persist (disk full: MISCONF) is an outage too.
        if not store_refused(exc):
            log.exception("unhandled error", extra={"event": "error", "path": request.path})
            return error_response(request, 500, "internal", "系统内部错误，请稍后再试。")
        log.error("store refused write", extra={"event": "store_refused", "path": request.path,
                                                 "error": str(exc)[:200]})
        return error_response(request, 503, "storage_unavailable", STORE_REFUSED_MESSAGE, {"Retry-After": "5"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"event": "error", "path": request.path})
        return error_response(request, 500, "internal", "系统内部错误，请稍后再试。")


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resp = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    url = settings["store"]["redis_url"]
    embedded: EmbeddedRedis | None = None
    if not url:
        embedded = EmbeddedRedis(settings.data_dir, settings["store"]["appendfsync"])
        url = await asyncio.to_thread(embedded.start)
    store = Store.from_url(url, prefix=settings["store"]["key_prefix"],
                           timezone=settings["intake"]["timezone"],
                           idempotency_ttl_s=settings["store"]["idempotency_ttl_s"])
    try:
        # First thing: a store that does not answer stops start-up here, before the models load and the
        # background tasks start (each of them would log its own traceback of the same refused connection).
        await store.r.ping()
    except BaseException:
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    app[STORE] = store
    # The embedded server exits on an AOF write error (disk full); bring it back when it can run again.
    supervisor = asyncio.create_task(embedded.supervise()) if embedded is not None else None
    try:
        yield
    finally:
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    classifier = await asyncio.to_thread(load_classifier, settings)
    app[CLASSIFIER] = classifier
    app[INTAKE] = Intake(app[STORE], classifier,
                         max_text_bytes=settings["intake"]["max_text_bytes"],
                         min_text_chars=settings["intake"]["min_text_chars"])
    app[NOTIFICATIONS] = Notifications(app[STORE])
    log.info("pipeline ready", extra={"event": "pipeline_ready", "classifier": classifier.name})
    yield


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    store_ok = await request.app[STORE].ping()
    classifier = request.app[CLASSIFIER].name
    # Without models the service still runs, but every case waits for a call-taker and calls go to a person.
    models = {"classifier": classifier != "none", "stt": request.app.get(STT) is not None}
    body = {"redis": store_ok, "classifier": classifier, "models": models}
    return web.json_response(body, status=200 if store_ok else 503)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings["server"]["max_body_bytes"],
        middlewares=[security_headers_middleware, errors_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[TEMPLATES] = make_environment(settings["intake"]["timezone"])
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(pipeline_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    for name in FEATURE_MODULES:
        importlib.import_module(name).setup(app)
    return app
