"""Staff accounts, login sessions, login throttling and console counters in Redis.

Layout (prefix ``hl``):
- ``hl:staff:user:<name>``        hash: name, role, display_name, pw (argon2 hash), created_at, disabled,
                                  session_gen (a session is valid only while it carries this number)
- ``hl:staff:users``              set of every account name
- ``hl:staff:session:<sha256>``   JSON of one login session; the key's TTL is the idle timeout. Only the
                                  hash of the cookie value is stored, so a copy of the database does not
                                  hold usable session tokens.
- ``hl:staff:fail:<kind>:<id>``   failed logins of a user name or a client address within the window
- ``hl:staff:adopt:<YYYYMMDD>``   hash of counters: per head how many AI suggestions were reviewed and how
                                  many were accepted unchanged, and the same per call-taker

Account names are case-insensitive: ``Wang`` logs in to ``wang``, and no second account may differ from
an existing one only in case. The key keeps the spelling the account was created with, so accounts stored
before this rule keep working; two such accounts that differ only in case are each reached by their exact
spelling only.

Password hashing is CPU work: the helpers here are synchronous and callers run them in a thread.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.exceptions import WatchError

from hotline.access import ROLES
from hotline.store.cases import Store

NAME_RE = re.compile(r"^[A-Za-z0-9_.\-\u4e00-\u9fff]{1,32}$")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
HEADS = ("category", "department", "type")
# Reviewed like the classifier's heads when the call-taker chooses it: the urgency rules' level.
URGENCY_HEAD = "urgency"
REVIEWED_HEADS = (*HEADS, URGENCY_HEAD)

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user name is unknown, so a wrong name costs as much as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


class UserError(ValueError):
    """A user name, role or password that cannot be accepted; the message says why (in Chinese)."""


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"密码至少 {MIN_PASSWORD_CHARS} 个字符。")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"密码最多 {MAX_PASSWORD_CHARS} 个字符。")


def verify_password(pw_hash: str | None, password: str) -> bool:
    """True when the password matches; a missing or corrupt hash costs the same time and fails."""
    if len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        return _hasher.verify(pw_hash or _dummy_hash(), password) and pw_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def valid_name(name: str) -> bool:
    return isinstance(name, str) and bool(NAME_RE.match(name))


@dataclass
class User:
    name: str
    role: str
    display_name: str = ""
    created_at: float = 0.0
    disabled: bool = False
    session_gen: int = 0

    @property
    def label(self) -> str:
        return self.display_name or self.name


@dataclass
class Session:
    token_hash: str
    user: str
    csrf: str
    created_at: float
    gen: int = 0  # the user's session_gen at login; sessions from before the last password change differ


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p

    def k_user(self, name: str) -> str:
        return f"{self.p}:staff:user:{name}"

    @property
    def k_users(self) -> str:
        return f"{self.p}:staff:users"

    def k_session(self, token_hash: str) -> str:
        return f"{self.p}:staff:session:{token_hash}"

    def k_fail(self, kind: str, ident: str) -> str:
        digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
        return f"{self.p}:staff:fail:{kind}:{digest}"

    # accounts ------------------------------------------------------------
    async def add(self, name: str, role: str, pw_hash: str, *, display_name: str = "",
                  replace: bool = False) -> User:
        if not valid_name(name):
            raise UserError("用户名只能包含字母、数字、汉字和 _ . -，最长 32 个字符。")
        if role not in ROLES:
            raise UserError(f"未知角色 {role!r}，可选：{', '.join(ROLES)}。")
        user = User(name=name, role=role, display_name=display_name[:64], created_at=time.time())
        fields = {"name": name, "role": role, "display_name": user.display_name, "pw": pw_hash,
                  "created_at": f"{user.created_at:.3f}", "disabled": "0"}
        key = self.k_user(name)
        folded = name.lower()
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # Watching the name set as well: two concurrent adds of Wang and wang cannot both pass.
                    await pipe.watch(key, self.k_users)
                    exists = bool(await pipe.exists(key))
                    if exists and not replace:
                        raise UserError(f"用户 {name} 已存在。")
                    twin = next((n for n in sorted(await pipe.smembers(self.k_users))
                                 if n != name and n.lower() == folded), None)
                    if twin is not None:
                        raise UserError(f"用户 {twin} 已存在（用户名不区分大小写）。")
                    pipe.multi()
                    pipe.hset(key, mapping=fields)
                    pipe.sadd(self.k_users, name)
                    if exists:
                        # A replaced account has a new password: whoever was logged in as it is logged out.
                        pipe.hincrby(key, "session_gen", 1)
                    await pipe.execute()
                    return user
                except WatchError:
                    continue

    async def resolve(self, name: str) -> str | None:
        """The stored spelling of the account ``name`` reaches, compared without case; None when none or
        when two accounts stored before names were case-insensitive match and ``name`` is neither exactly."""
        if not valid_name(name):
            return None
        if await self.r.hexists(self.k_user(name), "role"):
            return name
        folded = name.lower()
        matches = [n for n in await self.r.smembers(self.k_users) if n.lower() == folded]
        return matches[0] if len(matches) == 1 else None

    async def get(self, name: str) -> User | None:
        if not valid_name(name):
            return None
        data = await self.r.hgetall(self.k_user(name))
        if not data.get("role"):
            account = await self.resolve(name)
            data = await self.r.hgetall(self.k_user(account)) if account else {}
        return self._user(data) if data.get("role") else None

    async def password_hash(self, name: str) -> str | None:
        account = await self.resolve(name)
        return await self.r.hget(self.k_user(account), "pw") if account else None

    async def _existing(self, name: str) -> str:
        account = await self.resolve(name)
        if account is None:
            raise UserError(f"用户 {name} 不存在。")
        return account

    async def set_password(self, name: str, pw_hash: str) -> str:
        """Set a new password and end every session of the account (a password is changed when it may be
        known to someone else); returns the account's stored name."""
        account = await self._existing(name)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.k_user(account), "pw", pw_hash)
            pipe.hincrby(self.k_user(account), "session_gen", 1)
            await pipe.execute()
        return account

    async def set_disabled(self, name: str, disabled: bool) -> str:
        account = await self._existing(name)
        await self.r.hset(self.k_user(account), "disabled", "1" if disabled else "0")
        return account

    async def all(self) -> list[User]:
        names = sorted(await self.r.smembers(self.k_users))
        async with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.k_user(name))
            rows = await pipe.execute()
        return [self._user(d) for d in rows if d.get("role")]

    @staticmethod
    def _user(data: dict[str, str]) -> User:
        return User(name=data["name"], role=data["role"], display_name=data.get("display_name", ""),
                    created_at=float(data.get("created_at") or 0), disabled=data.get("disabled") == "1",
                    session_gen=int(data.get("session_gen") or 0))

    # sessions ------------------------------------------------------------
    async def create_session(self, user: User, idle_s: int) -> tuple[str, Session]:
        """A fresh random token (never reused across logins, so a planted cookie is worthless)."""
        token = secrets.token_urlsafe(32)
        session = Session(token_hash=_token_hash(token), user=user.name, csrf=secrets.token_urlsafe(24),
                          created_at=time.time(), gen=user.session_gen)
        payload = {"user": session.user, "csrf": session.csrf, "created_at": session.created_at,
                   "gen": session.gen}
        await self.r.set(self.k_session(session.token_hash), json.dumps(payload), ex=max(1, idle_s))
        return token, session

    async def get_session(self, token: str, idle_s: int, max_s: int) -> Session | None:
        """The live session of a cookie value, its idle timer restarted; None when unknown or expired."""
        if not token or len(token) > 128:
            return None
        th = _token_hash(token)
        key = self.k_session(th)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, max(1, idle_s), xx=True)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            session = Session(token_hash=th, user=str(data["user"]), csrf=str(data["csrf"]),
                              created_at=float(data["created_at"]), gen=int(data.get("gen", 0)))
        except (ValueError, KeyError, TypeError):
            await self.r.delete(key)
            return None
        if time.time() - session.created_at > max_s:
            await self.r.delete(key)
            return None
        return session

    async def delete_session(self, token_hash: str) -> None:
        await self.r.delete(self.k_session(token_hash))

    # login throttling ----------------------------------------------------
    async def failures(self, keys: list[tuple[str, str]]) -> list[tuple[int, int]]:
        """(failed attempts, seconds until the count resets) for each (kind, id)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for kind, ident in keys:
                pipe.get(self.k_fail(kind, ident))
                pipe.ttl(self.k_fail(kind, ident))
            res = await pipe.execute()
        return [(int(res[i] or 0), max(0, int(res[i + 1]))) for i in range(0, len(res), 2)]

    async def record_failure(self, keys: list[tuple[str, str]], window_s: int) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            for kind, ident in keys:
                k = self.k_fail(kind, ident)
                pipe.incr(k)
                # The window starts at the first failure; later failures do not extend it.
                pipe.expire(k, max(1, window_s), nx=True)
            await pipe.execute()

    async def clear_failures(self, kind: str, ident: str) -> None:
        await self.r.delete(self.k_fail(kind, ident))


class ConsoleStats:
    """Counters behind the 采纳率 (share of AI suggestions accepted unchanged), by day, head and user."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p

    def k_day(self, day: str) -> str:
        return f"{self.p}:staff:adopt:{day}"

    def day(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self.store.tz).strftime("%Y%m%d")

    async def record_review(self, user: str, accepted: dict[str, bool], ts: float | None = None) -> None:
        """``accepted``: head → whether the call-taker kept the AI's top suggestion (heads with one only)."""
        if not accepted:
            return
        key = self.k_day(self.day(ts or time.time()))
        all_ok = all(accepted.values())
        async with self.r.pipeline(transaction=True) as pipe:
            for head, ok in accepted.items():
                pipe.hincrby(key, f"head:{head}:n", 1)
                if ok:
                    pipe.hincrby(key, f"head:{head}:ok", 1)
            pipe.hincrby(key, "all:n", 1)
            pipe.hincrby(key, f"user:{user}:n", 1)
            if all_ok:
                pipe.hincrby(key, "all:ok", 1)
                pipe.hincrby(key, f"user:{user}:ok", 1)
            pipe.expire(key, 400 * 86400)
            await pipe.execute()

    async def adoption(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Summed counters over the local days [start, end]."""
        days = []
        d = start
        while d.date() <= end.date() and len(days) < 400:
            days.append(d.strftime("%Y%m%d"))
            d += timedelta(days=1)
        async with self.r.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self.k_day(day))
            rows = await pipe.execute()
        totals: dict[str, int] = {}
        for row in rows:
            for field_, value in row.items():
                totals[field_] = totals.get(field_, 0) + int(value)

        def rate(n: int, ok: int) -> dict[str, Any]:
            return {"reviewed": n, "accepted": ok, "rate": round(ok / n, 4) if n else None}

        heads = {h: rate(totals.get(f"head:{h}:n", 0), totals.get(f"head:{h}:ok", 0)) for h in REVIEWED_HEADS}
        users = {}
        for field_, n in totals.items():
            if field_.startswith("user:") and field_.endswith(":n"):
                name = field_[5:-2]
                users[name] = rate(n, totals.get(f"user:{name}:ok", 0))
        return {"from": days[0] if days else "", "to": days[-1] if days else "", "heads": heads,
                "all": rate(totals.get("all:n", 0), totals.get("all:ok", 0)),
                "users": dict(sorted(users.items()))}

    async def case_ids_newest(self, start: float, end: float, limit: int) -> list[str]:
        """Cases created in [start, end), newest first (the search scans these)."""
        return await self.r.zrevrangebyscore(self.store.k_all, f"({end}", start, start=0, num=limit)
