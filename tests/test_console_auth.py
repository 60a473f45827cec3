"""Staff login, sessions, CSRF, throttling and the role check on every marked route of the whole app."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.access import ROLES, can_see_phone, required_roles
from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.records import Case
from hotline.status import Status
from hotline.store.users import User, Users
from tests.conftest import make_settings
from tests.console_support import DEFAULT_PASSWORD, add_user, login_form, new_session, staff_login


async def make_client(aiohttp_client: Any, redis_server: Any, tmp_path: Path, prefix: str,
                      **console: Any) -> TestClient:
    settings = make_settings(redis_server.url, tmp_path, prefix, console=console) if console else \
        make_settings(redis_server.url, tmp_path, prefix)
    return await aiohttp_client(create_app(settings))


async def submit(client: TestClient, text: str, contact: str = "13812345678", address: str = "") -> str:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact, "address": address})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["case_id"]


# login -----------------------------------------------------------------------------------

async def test_login_sets_safe_cookie_and_logout_ends_session(client: TestClient) -> None:
    await add_user(client.app[STORE], "wang", "call_taker")
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as s:
        resp = await login_form(s, base, "wang", DEFAULT_PASSWORD, next_="/console/search?q=1")
        assert resp.status == 303
        assert resp.headers["Location"] == "/console/search?q=1"
        cookie = resp.cookies["hl_staff"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
        assert not cookie["secure"]  # plain http on loopback
        me = await s.get(f"{base}/api/v1/console/me")
        body = await me.json()
        assert body["name"] == "wang" and body["role"] == "call_taker" and len(body["csrf_token"]) > 20
        # Logout is a POST with the token; afterwards the old cookie value is worthless.
        old = cookie.value
        out = await s.post(f"{base}/console/logout", data={"csrf_token": body["csrf_token"]}, allow_redirects=False)
        assert out.status == 303 and out.headers["Location"] == "/console/login"
    async with new_session() as s2:
        s2.cookie_jar.update_cookies({"hl_staff": old}, client.make_url("/"))
        assert (await s2.get(f"{base}/api/v1/console/me")).status == 401


async def test_wrong_password_unknown_user_and_disabled_user_are_refused(client: TestClient) -> None:
    store = client.app[STORE]
    await add_user(store, "li", "supervisor")
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as s:
        for name, pw in (("li", "wrong-password"), ("nobody", DEFAULT_PASSWORD), ("li", "")):
            resp = await login_form(s, base, name, pw)
            assert resp.status == 401
            assert "用户名或密码错误" in await resp.text()
        await Users(store).set_disabled("li", True)
        assert (await login_form(s, base, "li", DEFAULT_PASSWORD)).status == 401


async def test_disabling_a_user_ends_their_live_session(client: TestClient) -> None:
    async with staff_login(client, "call_taker") as staff:
        assert (await staff.get("/api/v1/console/queue")).status == 200
        await Users(client.app[STORE]).set_disabled(staff.name, True)
        assert (await staff.get("/api/v1/console/queue")).status == 401


async def test_next_parameter_cannot_redirect_off_site(client: TestClient) -> None:
    await add_user(client.app[STORE], "zhao", "call_taker")
    base = str(client.make_url("")).rstrip("/")
    for evil in ("https://evil.example/", "//evil.example/console/", "/console/\\evil", "/static/x"):
        async with new_session() as s:
            resp = await login_form(s, base, "zhao", DEFAULT_PASSWORD, next_=evil)
            assert resp.status == 303
            assert resp.headers["Location"] == "/console/queue"


async def test_pages_redirect_to_login_and_apis_answer_401(client: TestClient) -> None:
    resp = await client.get("/console/queue", headers={"Accept": "text/html"}, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/login?next=%2Fconsole%2Fqueue"
    resp = await client.get("/api/v1/console/queue")
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "unauthorized"


# CSRF ------------------------------------------------------------------------------------

async def test_csrf_token_required_on_every_state_change(client: TestClient) -> None:
    case_id = await submit(client, "小区门口井盖丢失，很危险")
    async with staff_login(client, "call_taker") as staff:
        body = {"category": "城乡建设", "department": "城乡建设局"}
        url = f"/api/v1/console/cases/{case_id}/confirm"
        missing = await staff.post_json(url, body, csrf=False)
        assert missing.status == 403
        assert (await missing.json())["error"]["code"] == "csrf"
        wrong = await staff.post_json(url, body, headers={"X-CSRF-Token": "forged"})
        assert wrong.status == 403
        # A cross-site form post carries the cookie but cannot know the token.
        form = await staff.request("POST", "/console/logout", csrf=False, data={"csrf_token": "guess"})
        assert form.status == 403
        assert (await staff.get("/api/v1/console/me")).status == 200  # still logged in
        case = await client.app[STORE].get_case(case_id)
        assert case.status == Status.CLASSIFIED  # nothing was written
        ok = await staff.post_json(url, body)
        assert ok.status == 200, await ok.text()


async def test_login_form_needs_its_own_csrf_token(client: TestClient) -> None:
    await add_user(client.app[STORE], "sun", "call_taker")
    resp = await client.post("/console/login", data={"name": "sun", "password": DEFAULT_PASSWORD},
                             allow_redirects=False)
    assert resp.status == 403
    assert "hl_staff" not in resp.cookies


# throttling ------------------------------------------------------------------------------

async def test_login_throttled_per_user_then_per_address(aiohttp_client: Any, redis_server: Any, tmp_path: Path,
                                                         key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix, login_max_failures=3,
                               login_ip_max_failures=5, login_window_s=60)
    store = client.app[STORE]
    await add_user(store, "zhou", "call_taker")
    await add_user(store, "wu", "call_taker")
    base = str(client.make_url("")).rstrip("/")
    async with new_session() as s:
        for _ in range(3):
            assert (await login_form(s, base, "zhou", "bad-password")).status == 401
        blocked = await login_form(s, base, "zhou", DEFAULT_PASSWORD)  # right password, still refused
        assert blocked.status == 429
        assert 0 < int(blocked.headers["Retry-After"]) <= 60
        assert "登录失败次数过多" in await blocked.text()
        # Another account from the same address still works (2 more failures allowed from here)...
        assert (await login_form(s, base, "wu", DEFAULT_PASSWORD)).status == 303
    async with new_session() as s:
        for _ in range(2):
            assert (await login_form(s, base, "nobody", "x" * 10)).status == 401
        # ...until the address itself has failed too often.
        assert (await login_form(s, base, "wu", DEFAULT_PASSWORD)).status == 429


# session expiry --------------------------------------------------------------------------

async def test_idle_session_expires(aiohttp_client: Any, redis_server: Any, tmp_path: Path, key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix, session_idle_s=1)
    async with staff_login(client, "call_taker") as staff:
        assert (await staff.get("/api/v1/console/queue")).status == 200
        await asyncio.sleep(2.2)
        page = await staff.page("/console/queue")
        assert page.status == 303 and page.headers["Location"].startswith("/console/login?")
        assert "expired=1" in page.headers["Location"]
    async with staff_login(client, "call_taker") as staff:
        await asyncio.sleep(2.2)
        resp = await staff.get("/api/v1/console/queue")
        assert resp.status == 401
        assert "登录已过期" in (await resp.json())["error"]["message"]


async def test_activity_keeps_session_but_not_past_the_maximum(aiohttp_client: Any, redis_server: Any,
                                                               tmp_path: Path, key_prefix: str) -> None:
    client = await make_client(aiohttp_client, redis_server, tmp_path, key_prefix, session_idle_s=2,
                               session_max_s=4)
    async with staff_login(client, "supervisor") as staff:
        for _ in range(3):  # each request restarts the 2 s idle timer
            await asyncio.sleep(1.2)
            assert (await staff.get("/api/v1/console/me")).status == 200
        await asyncio.sleep(1.0)  # 4.6 s after login: past session_max_s although never idle for 2 s
        assert (await staff.get("/api/v1/console/me")).status == 401


# roles on every route --------------------------------------------------------------------

def _fill(path: str, case_id: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: case_id if m.group(0) == "{case_id}" else "main", path)


async def test_every_marked_route_rejects_anonymous_and_wrong_roles(client: TestClient) -> None:
    case_id = await submit(client, "路灯不亮已经三天")
    routes = []
    for route in client.app.router.routes():
        roles = required_roles(route.handler)
        if roles is None or route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"marked route without a path: {route}"
        routes.append((route.method, _fill(path, case_id), roles))
    # Logging out last, so the loop below keeps its session.
    routes.sort(key=lambda r: r[1] == "/console/logout")
    assert len(routes) >= 15  # the console's own routes alone are more; other features add theirs
    methods = {m for m, _p, _r in routes}
    assert {"GET", "POST"} <= methods

    for method, path, _roles in routes:
        resp = await client.request(method, path, json={}, allow_redirects=False)
        assert resp.status == 401, (method, path, resp.status)
        page = await client.request(method, path, headers={"Accept": "text/html"}, allow_redirects=False)
        assert page.status in (303, 401), (method, path)

    for role in ROLES:
        async with staff_login(client, role) as staff:
            for method, path, roles in routes:
                if role in roles:
                    # Only the status line: an event stream (live updates) never ends its body.
                    async with staff.session.request(method, staff.url(path), json={}, allow_redirects=False,
                                                     headers={"X-CSRF-Token": staff.csrf}) as resp:
                        assert resp.status not in (401, 403), (role, method, path, resp.status)
                else:
                    resp = await staff.request(method, path, json={})
                    assert resp.status == 403, (role, method, path, resp.status)
                    if path.startswith("/api/"):
                        assert (await resp.json())["error"]["code"] == "forbidden"


async def test_follow_up_agent_is_refused_the_queue_page(client: TestClient) -> None:
    async with staff_login(client, "follow_up") as staff:
        page = await staff.page("/console/queue")
        assert page.status == 403
        assert "无权访问" in await page.text()
        home = await staff.page("/console/")
        assert home.status == 303 and home.headers["Location"] == "/console/search"


# phone numbers -----------------------------------------------------------------------------

def test_only_follow_up_agents_see_phones_of_finished_cases() -> None:
    case = Case(id="20260101-000001", channel="web", sender="x", status=Status.RESOLVED, created_at=0, updated_at=0,
                text="t", normalized_text="t", contact="13812345678")
    assert can_see_phone(User("a", "follow_up"), case)
    assert not can_see_phone(User("b", "call_taker"), case)
    assert not can_see_phone(User("c", "supervisor"), case)
    assert can_see_phone({"role": "follow_up"}, case)
    case.status = Status.DISPATCHED
    assert not can_see_phone(User("a", "follow_up"), case)


# the users command -------------------------------------------------------------------------

def test_users_add_command_reads_password_from_stdin(redis_server: Any, tmp_path: Path, key_prefix: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "HOTLINE_STORE__KEY_PREFIX": key_prefix,
           "HOTLINE_SERVER__DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "hotline", "users", "add", "chen", "--role", "follow_up"]
    done = subprocess.run(cmd, input="a-long-password\n", capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(cmd, input="a-long-password\n", capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and "已存在" in again.stderr
    short = subprocess.run([*cmd[:5], "zhang", "--role", "call_taker"], input="short\n", capture_output=True,
                           text=True, env=env, timeout=60)
    assert short.returncode == 1 and "至少" in short.stderr
    bad_role = subprocess.run([*cmd[:5], "he", "--role", "admin"], input="a-long-password\n", capture_output=True,
                              text=True, env=env, timeout=60)
    assert bad_role.returncode == 2
    listed = subprocess.run([sys.executable, "-m", "hotline", "users", "list"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert "chen\tfollow_up" in listed.stdout and "zhang" not in listed.stdout


async def test_account_made_by_the_command_can_log_in(client: TestClient, redis_server: Any,
                                                      tmp_path: Path, key_prefix: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_server.url, "HOTLINE_STORE__KEY_PREFIX": key_prefix,
           "HOTLINE_SERVER__DATA_DIR": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotline", "users", "add", "qian", "--role", "supervisor",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _out, err = await proc.communicate(b"another-long-password\n")
    assert proc.returncode == 0, err
    async with staff_login(client, "supervisor", name="qian", password="another-long-password", create=False) as s:
        assert (await s.get("/api/v1/console/metrics/adoption")).status == 200


@pytest.mark.parametrize("name", ["", "a b", "x" * 33, "<script>", "../etc"])
async def test_bad_user_names_are_refused(store: Any, name: str) -> None:
    from hotline.store.users import UserError

    with pytest.raises(UserError):
        await Users(store).add(name, "call_taker", "unused-hash")
    with pytest.raises(UserError):
        await Users(store).add("okname", "admin", "unused-hash")
