"""Helpers for tests that act as staff: create accounts, log in through the real login form, call staff APIs.

Other features' tests use it like this::

    from tests.console_support import staff_login

    async def test_worklist(client):
        async with staff_login(client, "follow_up") as staff:
            resp = await staff.get("/api/v1/callbacks")              # session cookie sent
            resp = await staff.post_json("/api/v1/callbacks/ID/main", {"outcome": "no_answer"})  # + CSRF
            assert staff.actor == f"staff:{staff.name}"               # what the audit trail records

``client`` is the conftest fixture (the whole app on loopback). Each ``staff_login`` has its own cookie
jar, so one test can act as several staff members at once.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from hotline.appkeys import STORE
from hotline.store import Store
from hotline.store.users import User, Users, hash_password

DEFAULT_PASSWORD = "s3cret-Passw0rd"
_CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_user(store: Store, name: str | None = None, role: str = "call_taker",
                   password: str = DEFAULT_PASSWORD, display_name: str = "") -> User:
    name = name or f"{role}-{uuid.uuid4().hex[:6]}"
    return await Users(store).add(name, role, hash_password(password), display_name=display_name)


class StaffClient:
    """A logged-in browser-like session: cookies kept, the CSRF token sent on every call."""

    def __init__(self, session: aiohttp.ClientSession, base: str, name: str, role: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.name = name
        self.role = role
        self.csrf = ""

    @property
    def actor(self) -> str:
        return f"staff:{self.name}"

    def url(self, path: str) -> str:
        return self.base + path

    async def request(self, method: str, path: str, *, csrf: bool = True, **kwargs: Any) -> aiohttp.ClientResponse:
        headers = dict(kwargs.pop("headers", {}) or {})
        if csrf and self.csrf:
            headers.setdefault("X-CSRF-Token", self.csrf)
        kwargs.setdefault("allow_redirects", False)
        resp = await self.session.request(method, self.url(path), headers=headers, **kwargs)
        await resp.read()
        return resp

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post_json(self, path: str, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, json=body, **kwargs)

    async def page(self, path: str) -> aiohttp.ClientResponse:
        """A GET as a browser navigation (Accept: text/html)."""
        return await self.get(path, headers={"Accept": "text/html"})


async def login_form(session: aiohttp.ClientSession, base: str, name: str, password: str,
                     next_: str = "") -> aiohttp.ClientResponse:
    """GET the login page (for its CSRF token and cookie), then POST the form as a browser does."""
    page = await session.get(f"{base}/console/login", headers={"Accept": "text/html"})
    match = _CSRF_INPUT.search(await page.text())
    assert match, "login page without a CSRF token"
    resp = await session.post(f"{base}/console/login", allow_redirects=False,
                              data={"name": name, "password": password, "csrf_token": match.group(1), "next": next_})
    await resp.read()
    return resp


def new_session() -> aiohttp.ClientSession:
    # unsafe=True: keep cookies of an IP-address host (127.0.0.1), as browsers do.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@asynccontextmanager
async def staff_login(client: TestClient, role: str = "call_taker", *, name: str | None = None,
                      password: str = DEFAULT_PASSWORD, create: bool = True) -> AsyncIterator[StaffClient]:
    """Create (unless ``create=False``) and log in a staff member of ``role``; yields a StaffClient."""
    store = client.app[STORE]
    if create:
        user = await add_user(store, name, role, password)
        name = user.name
    assert name
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as session:
        resp = await login_form(session, base, name, password)
        assert resp.status == 303, f"login of {name} failed: {resp.status}"
        staff = StaffClient(session, base, name, role)
        me = await staff.get("/api/v1/console/me")
        assert me.status == 200
        staff.csrf = (await me.json())["csrf_token"]
        yield staff


async def sign_in(page: Any, base: str, name: str, password: str = DEFAULT_PASSWORD) -> None:
    """Log a staff member in through the real login page of a Playwright ``page``."""
    await page.goto(f"{base}/console/login")
    await page.fill("#name", name)
    await page.fill("#password", password)
    await page.click("#login")
    await page.wait_for_url(lambda url: "/console/login" not in url)
