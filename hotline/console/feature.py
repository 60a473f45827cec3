"""The staff consoles as an app feature: routes, the live-feed reader, the catalog, the auth middleware.

Scripts and styles are static files under /static/console/ (the site CSP allows only same-origin scripts).
"""

from __future__ import annotations

from aiohttp import web

from hotline.appkeys import SETTINGS
from hotline.console import (
    auth,
    callbacks_pages,
    cases,
    kb_pages,
    live,
    metrics,
    queue,
    registration,
    search,
    supervision,
)
from hotline.console.catalog import CatalogSource

API = "/api/v1/console"


def setup(app: web.Application) -> None:
    # create_app installs auth.auth_middleware for the whole app; this covers an app built without it.
    if auth.auth_middleware not in app.middlewares:
        app.middlewares.append(auth.auth_middleware)
    app[queue.CATALOG] = CatalogSource(app[SETTINGS])
    app.cleanup_ctx.append(live.live_ctx)
    app.on_shutdown.append(live.on_shutdown)
    r = app.router
    r.add_get("/console/login", auth.login_page)
    r.add_post("/console/login", auth.login_submit)
    r.add_post("/console/logout", auth.logout)
    r.add_get("/console", auth.console_home)
    r.add_get("/console/", auth.console_home)
    r.add_get("/console/queue", queue.queue_page)
    r.add_get("/console/queue/list", queue.queue_list_fragment)
    r.add_get("/console/queue/case/{case_id}", queue.queue_case_fragment)
    r.add_get("/console/cases/{case_id}", cases.case_page)
    r.add_get("/console/attachments/{name}", cases.attachment)
    r.add_get("/console/search", search.search_page)
    r.add_get("/console/metrics", metrics.metrics_page)
    r.add_get("/console/supervision", supervision.supervision_page)
    callbacks_pages.setup(app)
    kb_pages.setup(app)
    registration.setup(app, API)
    r.add_get(f"{API}/me", auth.me)
    r.add_get(f"{API}/queue", queue.queue_json)
    r.add_get(f"{API}/catalog", queue.catalog_json)
    r.add_get(f"{API}/live", live.events)
    r.add_get(f"{API}/cases/{{case_id}}", cases.case_json)
    r.add_post(f"{API}/cases/{{case_id}}/confirm", queue.confirm)
    r.add_post(f"{API}/cases/{{case_id}}/merge", queue.merge)
    r.add_post(f"{API}/cases/{{case_id}}/reject-duplicate", queue.reject_duplicate)
    r.add_post(f"{API}/cases/{{case_id}}/unmerge", queue.unmerge)
    r.add_get(f"{API}/search", search.search_json)
    r.add_get(f"{API}/metrics/adoption", metrics.metrics_json)
