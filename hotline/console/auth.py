"""Staff login, sessions, CSRF and the role check that guards every ``@requires`` route of the app.

The middleware reads the roles from ``request.match_info.handler`` (hotline/access.py):
- no mark: public, passed through (a staff session is still loaded on console pages);
- not logged in: 401 JSON, or for a browser asking for a page a redirect to the login page;
- logged in with another role: 403;
- a state-changing request (POST, PUT, PATCH, DELETE) must carry the session's CSRF token in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field, else 403.
The logged-in user is ``request["user"]`` (a ``User`` with ``name`` and ``role``).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import secrets
import warnings
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning

from hotline.access import (
    CALL_TAKER,
    FOLLOW_UP,
    ROLE_LABELS_ZH,
    SUPERVISOR,
    required_roles,
    requires,
)
from hotline.appkeys import SETTINGS, STORE, TEMPLATES
from hotline.bodies import read_form
from hotline.store.users import Session, User, Users, verify_password

log = logging.getLogger("hotline.console")

dumps = functools.partial(json.dumps, ensure_ascii=False)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_COOKIE = "hl_staff"
LOGIN_CSRF_COOKIE = "hl_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_PATH = "/console/login"
HOME_BY_ROLE = {CALL_TAKER: "/console/queue", SUPERVISOR: "/console/queue", FOLLOW_UP: "/console/search"}


# helpers other features use ----------------------------------------------------------

def current_user(request: web.Request) -> User | None:
    user = request.get("user")
    return user if isinstance(user, User) else None


def staff_actor(request: web.Request) -> str:
    """The audit-trail actor of the logged-in staff member: ``staff:<name>``."""
    user = current_user(request)
    if user is None:
        raise web.HTTPUnauthorized(text="请先登录。")
    return f"staff:{user.name}"


def csrf_token(request: web.Request) -> str:
    session = request.get("session")
    return session.csrf if isinstance(session, Session) else ""


def console_settings(app: web.Application) -> dict[str, Any]:
    return app[SETTINGS]["console"]


def wants_page(request: web.Request) -> bool:
    """A browser navigating to a page (redirect to login) rather than a script calling an API (401)."""
    return not request.path.startswith("/api/") and "text/html" in request.headers.get("Accept", "")


def home_for(user: User) -> str:
    return HOME_BY_ROLE.get(user.role, "/console/search")


def safe_next(value: str) -> str:
    """Only a local console path may be the target after login (no open redirect)."""
    if value.startswith("/console/") and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return ""


def _cookie_secure(request: web.Request) -> bool:
    mode = str(console_settings(request.app)["secure_cookies"]).lower()
    if mode == "always":
        return True
    if mode == "never":
        return False
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers,
                             dumps=dumps)


def redirect(location: str) -> web.Response:
    """A 303 as a plain response, so cookies can be set on it."""
    return web.Response(status=303, headers={"Location": location})


def render_console(request: web.Request, template_name: str, status: int = 200, **context: Any) -> web.Response:
    """A console page: every template gets the user, the CSRF token and the navigation."""
    user = current_user(request)
    template = request.app[TEMPLATES].get_template(template_name)
    text = template.render(user=user, csrf=csrf_token(request), role_labels=ROLE_LABELS_ZH,
                           role_label=ROLE_LABELS_ZH.get(user.role, "") if user else "",
                           path=request.path, **context)
    resp = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    # Staff pages carry personal data: never cached by the browser or a proxy.
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _unauthorized(request: web.Request, expired: bool) -> web.StreamResponse:
    if wants_page(request):
        target = request.path_qs if request.method == "GET" else ""
        location = LOGIN_PATH + (f"?next={quote(target, safe='')}" if safe_next(target) else "")
        if expired:
            location += ("&" if "?" in location else "?") + "expired=1"
        resp = redirect(location)
        if expired:
            resp.del_cookie(SESSION_COOKIE, path="/")
        return resp
    resp = _json_error(401, "unauthorized", "登录已过期，请重新登录。" if expired else "请先登录。")
    if expired:
        resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


def _forbidden(request: web.Request, message: str, code: str = "forbidden") -> web.Response:
    if wants_page(request):
        return render_console(request, "console/error.html", status=403, code=code, message=message)
    return _json_error(403, code, message)


async def _csrf_ok(request: web.Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await read_form(request)  # cached on the request: the handler reads the same form
        sent = str(form.get(CSRF_FIELD, ""))
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


async def load_user(request: web.Request) -> tuple[User | None, Session | None, bool]:
    """(user, session, expired): expired is True when a cookie was sent but no live session matches."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None, None, False
    cfg = console_settings(request.app)
    users = Users(request.app[STORE])
    session = await users.get_session(token, int(cfg["session_idle_s"]), int(cfg["session_max_s"]))
    if session is None:
        return None, None, True
    user = await users.get(session.user)
    # A password change (or a replaced account) moves session_gen on: older sessions end with it.
    if user is None or user.disabled or session.gen != user.session_gen:
        await users.delete_session(session.token_hash)
        return None, None, True
    return user, session, False


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    roles = required_roles(request.match_info.handler)
    if roles is None and not request.path.startswith("/console/"):
        return await handler(request)
    user, session, expired = await load_user(request)
    if user is not None and session is not None:
        with warnings.catch_warnings():
            # Plain string keys on purpose: other features read ``request.get("user")``.
            warnings.simplefilter("ignore", NotAppKeyWarning)
            request["user"] = user
            request["session"] = session
    if roles is None:
        return await handler(request)
    if user is None or session is None:
        return _unauthorized(request, expired)
    if user.role not in roles:
        log.info("role refused", extra={"event": "staff_forbidden", "user": user.name, "role": user.role,
                                        "path": request.path})
        return _forbidden(request, "您的角色无权访问此页面或操作。")
    if request.method not in SAFE_METHODS and not await _csrf_ok(request, session):
        log.warning("csrf refused", extra={"event": "staff_csrf", "user": user.name, "path": request.path})
        return _forbidden(request, "页面已过期或请求来源不明（CSRF 校验失败），请刷新页面后重试。", "csrf")
    return await handler(request)


# login / logout ----------------------------------------------------------------------

def _login_page(request: web.Request, *, status: int = 200, error: str = "", name: str = "",
                headers: dict[str, str] | None = None) -> web.Response:
    token = secrets.token_urlsafe(24)
    nxt = safe_next(request.query.get("next", "")) if request.method == "GET" else ""
    resp = render_console(request, "console/login.html", status=status, error=error, login_csrf=token,
                          name=name, next=nxt or "", expired=request.query.get("expired") == "1")
    if headers:
        resp.headers.update(headers)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, path=LOGIN_PATH, httponly=True, samesite="Strict",
                    secure=_cookie_secure(request), max_age=3600)
    return resp


async def login_page(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    if user is not None:
        return redirect(home_for(user))
    return _login_page(request)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await read_form(request)
    name = str(form.get("name", "")).strip()[:64]
    password = str(form.get("password", ""))
    sent = str(form.get(CSRF_FIELD, ""))
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_page(request, status=403, error="登录页面已过期，请重新输入后登录。", name=name)
    cfg = console_settings(request.app)
    users = Users(request.app[STORE])
    ip = request.remote or "?"
    account = await users.resolve(name)
    # Failures count against the account a name reaches, in whatever case it was typed. A name that reaches
    # none (unknown, or TMP1 when Tmp1 and tmp1 both predate case-insensitive names) counts separately, so
    # guessing it cannot lock anyone out; it is still throttled like a real one, so 429s do not reveal names.
    user_key = ("user", account) if account else ("name", name.lower())
    keys = [user_key, ("ip", ip)]
    (user_fails, user_ttl), (ip_fails, ip_ttl) = await users.failures(keys)
    if user_fails >= int(cfg["login_max_failures"]) or ip_fails >= int(cfg["login_ip_max_failures"]):
        wait = max(user_ttl if user_fails >= int(cfg["login_max_failures"]) else 0, ip_ttl, 1)
        log.warning("login throttled", extra={"event": "staff_login_throttled", "user": name, "ip": ip})
        minutes = max(1, (wait + 59) // 60)
        return _login_page(request, status=429, name=name, headers={"Retry-After": str(wait)},
                           error=f"登录失败次数过多，请 {minutes} 分钟后再试。")
    pw_hash = await users.password_hash(account) if account else None
    ok = await asyncio.to_thread(verify_password, pw_hash, password)
    user = await users.get(account) if ok and account else None
    if user is None or user.disabled:
        await users.record_failure(keys, int(cfg["login_window_s"]))
        log.info("login failed", extra={"event": "staff_login_failed", "user": name, "ip": ip})
        return _login_page(request, status=401, error="用户名或密码错误。", name=name)
    await users.clear_failures(*user_key)
    token, _session = await users.create_session(user, int(cfg["session_idle_s"]))
    log.info("login", extra={"event": "staff_login", "user": user.name, "role": user.role, "ip": ip})
    target = safe_next(str(form.get("next", ""))) or home_for(user)
    resp = redirect(target)
    resp.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, samesite="Lax", secure=_cookie_secure(request))
    resp.del_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return resp


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def logout(request: web.Request) -> web.StreamResponse:
    session = request["session"]
    await Users(request.app[STORE]).delete_session(session.token_hash)
    log.info("logout", extra={"event": "staff_logout", "user": request["user"].name})
    resp = redirect(LOGIN_PATH)
    resp.del_cookie(SESSION_COOKIE, path="/")
    return resp


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def console_home(request: web.Request) -> web.StreamResponse:
    return redirect(home_for(request["user"]))


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def me(request: web.Request) -> web.Response:
    """Who is logged in and the CSRF token to send with state-changing calls (scripts, other consoles)."""
    user = request["user"]
    return web.json_response({"name": user.name, "role": user.role, "role_label": ROLE_LABELS_ZH[user.role],
                              "display_name": user.display_name, "csrf_token": csrf_token(request)})
