"""Outbound calls in Redis: which call UUID belongs to which case, and the answers coming back.

The process that places an outbound call (through Asterisk ARI) is rarely the one Asterisk connects to:
the dialplan opens ``AudioSocket(${HOTLINE_CALL_ID},host:port)`` to whichever ``hotline serve`` process
the address reaches. So both sides meet in Redis:

- ``hl:ocall:{<uuid>}``      hash {case_id, purpose, state, created}; TTL ≈ ring time + longest call.
                             ``state``: pending → connected (the AudioSocket side took it) or
                             abandoned (the originator gave up waiting; a late connection is hung up)
- ``hl:ocall:{<uuid>}:msgs`` list of JSON messages to the originator: {"event": "connected"}, then
                             {"event": "result", "answers": {...}, "hung_up": bool}

Both keys carry the same hash tag, so a cluster keeps one call on one node.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from hotline.store.cases import Store

PENDING = "pending"
CONNECTED = "connected"
ABANDONED = "abandoned"

# Moves the state only from the expected one; returns 1, or the state it found (nil when the key is gone).
_MOVE = """
local v = redis.call('HGET', KEYS[1], 'state')
if v == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  return 1
end
return v
"""


@dataclass
class OutboundCall:
    call_id: str
    case_id: str
    purpose: str  # "survey"
    state: str
    created: float


class CallStore:
    def __init__(self, store: Store) -> None:
        self.r = store.r
        self.p = store.p
        self._move = self.r.register_script(_MOVE)

    def k_call(self, call_id: str) -> str:
        return f"{self.p}:ocall:{{{call_id}}}"

    def k_msgs(self, call_id: str) -> str:
        return f"{self.p}:ocall:{{{call_id}}}:msgs"

    async def register(self, call_id: str, *, case_id: str, purpose: str, ttl_s: float) -> None:
        """Written before the PBX is asked to dial, so the connection always finds it."""
        ttl = max(1, int(ttl_s))
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(self.k_msgs(call_id))
            pipe.hset(self.k_call(call_id), mapping={"case_id": case_id, "purpose": purpose, "state": PENDING,
                                                     "created": f"{time.time():.3f}"})
            pipe.expire(self.k_call(call_id), ttl)
            await pipe.execute()

    async def get(self, call_id: str) -> OutboundCall | None:
        raw = await self.r.hgetall(self.k_call(call_id))
        if not raw or "case_id" not in raw:
            return None
        return OutboundCall(call_id, raw["case_id"], raw.get("purpose", ""), raw.get("state", ""),
                            float(raw.get("created", 0) or 0))

    async def move(self, call_id: str, expect: str, to: str) -> str | None:
        """Compare-and-set of the state: "" on success, else the state found (None: no such call)."""
        got = await self._move(keys=[self.k_call(call_id)], args=[expect, to])
        if got == 1:
            return ""
        return None if got is None else str(got)

    async def connect(self, call_id: str) -> OutboundCall | None:
        """The AudioSocket side claims an outbound call; None when it is not one (an inbound call).

        A call that is known but not pending (abandoned, or a second connection with the same id) comes
        back with its state so the caller can refuse it.
        """
        call = await self.get(call_id)
        if call is None:
            return None
        found = await self.move(call_id, PENDING, CONNECTED)
        if found == "":
            call.state = CONNECTED
            await self.post(call_id, {"event": "connected"})
        else:
            call.state = found or ABANDONED
        return call

    async def post(self, call_id: str, message: dict[str, Any]) -> None:
        ttl = await self.r.ttl(self.k_call(call_id))
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.rpush(self.k_msgs(call_id), json.dumps(message, ensure_ascii=False))
            # The answers must outlive a call record that is about to expire, long enough to be read.
            pipe.expire(self.k_msgs(call_id), max(60, int(ttl) if ttl and ttl > 0 else 60))
            await pipe.execute()

    async def next_message(self, call_id: str) -> dict[str, Any] | None:
        raw = await self.r.lpop(self.k_msgs(call_id))
        if raw is None:
            return None
        try:
            msg = json.loads(raw)
        except ValueError:
            return {"event": "bad"}
        return msg if isinstance(msg, dict) else {"event": "bad"}

    async def finish(self, call_id: str) -> None:
        await self.r.delete(self.k_call(call_id), self.k_msgs(call_id))

    async def abandon(self, call_id: str, keep_s: float = 120.0) -> bool:
        """The originator stops waiting for a connection; True when no connection had claimed it.

        The record stays a little while as ``abandoned`` so a connection arriving late is hung up
        instead of hearing the inbound menu.
        """
        found = await self.move(call_id, PENDING, ABANDONED)
        if found == "":
            await self.r.expire(self.k_call(call_id), max(1, int(keep_s)))
            return True
        return False


@dataclass
class InboundCall:
    """What the dialplan announced before a call and what the IVR decided at its end."""

    call_id: str
    caller: str = ""
    adapter: str = ""
    action: str = ""  # "" while the call runs; then "transfer" | "hangup"
    reason: str = ""
    case_id: str = ""


class InboundCallStore:
    """``hl:icall:{<id>}`` hash, TTL ``voice.result_ttl_s``.

    The dialplan announces the caller with one HTTP request and asks for the outcome with another after
    the call leg ends; behind a load balancer or ``--workers N`` these reach any process, not the one the
    PBX connected to, so the record lives in Redis.
    """

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.r = store.r
        self.p = store.p
        self.ttl = max(1, int(ttl_s))

    def k_call(self, call_id: str) -> str:
        return f"{self.p}:icall:{{{call_id}}}"

    async def _set(self, call_id: str, fields: dict[str, str]) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.k_call(call_id), mapping=fields)
            pipe.expire(self.k_call(call_id), self.ttl)
            await pipe.execute()

    async def announce(self, call_id: str, caller: str) -> None:
        await self._set(call_id, {"caller": caller})

    async def start(self, call_id: str, caller: str, adapter: str) -> str:
        """Marks the call as running; returns the caller number (the announced one when none is given)."""
        if not caller:
            caller = await self.r.hget(self.k_call(call_id), "caller") or ""
        await self._set(call_id, {"caller": caller, "adapter": adapter, "action": "", "reason": "",
                                  "case_id": ""})
        return caller

    async def finish(self, call_id: str, *, action: str, reason: str, case_id: str) -> None:
        await self._set(call_id, {"action": action, "reason": reason, "case_id": case_id})

    async def get(self, call_id: str) -> InboundCall | None:
        raw = await self.r.hgetall(self.k_call(call_id))
        if not raw:
            return None
        return InboundCall(call_id, raw.get("caller", ""), raw.get("adapter", ""), raw.get("action", ""),
                           raw.get("reason", ""), raw.get("case_id", ""))
