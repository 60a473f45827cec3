"""The outbox consumer: delivers work orders to the backend, exactly once in effect.

Each process runs one forwarder with its own consumer name in the stream's consumer group. An entry
is acknowledged only after the backend accepted it. A failed attempt is scheduled again with
exponential backoff and jitter; after ``max_attempts`` (or a refusal that retrying cannot fix) the
order moves to the dead-letter stream. Entries a crashed forwarder held are taken over with
XAUTOCLAIM once they have been idle for ``claim_idle_s`` (longer than any delivery may take).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hotline.dispatch.backends import Backend, Delivery, PermanentError, TransientError
from hotline.store.outbox import Outbox, OutboxEntry

log = logging.getLogger("hotline.dispatch.forwarder")

DeliveredHook = Callable[[str, str, str, str], Awaitable[None]]  # case_id, order_id, ref, backend
DeadHook = Callable[[str, str, str, int], Awaitable[None]]  # case_id, order_id, error, attempts


def consumer_name() -> str:
    """Unique per process: two processes never share a pending-entries list."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ForwarderConfig:
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    claim_idle_s: float = 60.0
    concurrency: int = 16
    block_ms: int = 100  # idle poll interval of the outbox


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, capped at max_s.

    Forwarders that failed together spread out instead of hammering a recovering backend in lockstep."""
    step = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return step / 2 + (rng or random).uniform(0, step / 2)


def _origin(exc: BaseException) -> str:
    """file:line of the innermost frame: enough to find the bug, without the exception's message."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


class Forwarder:
    def __init__(self, outbox: Outbox, backend: Backend, cfg: ForwarderConfig, *, consumer: str | None = None,
                 on_delivered: DeliveredHook | None = None, on_dead: DeadHook | None = None) -> None:
        self.outbox = outbox
        self.backend = backend
        self.cfg = cfg
        self.consumer = consumer or consumer_name()
        self.on_delivered = on_delivered
        self.on_dead = on_dead
        self._inflight: set[str] = set()
        self._claim_cursor = "0-0"
        self._last_claim = 0.0
        self.delivered = 0
        self.failed_attempts = 0
        self.buried = 0

    async def run(self) -> None:
        await self.outbox.ensure_group()
        log.info("forwarder started", extra={"event": "forwarder_started", "consumer": self.consumer,
                                             "backend": self.backend.name})
        sem = asyncio.Semaphore(self.cfg.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError  # a cancel some library call swallowed
                try:
                    batch = await self._next_batch(self.cfg.concurrency - len(tasks))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox read failed", extra={"event": "forwarder_read_failed"})
                    await asyncio.sleep(1.0)
                    continue
                for entry in batch:
                    if entry.entry_id in self._inflight:
                        continue
                    self._inflight.add(entry.entry_id)
                    task = asyncio.create_task(self._guarded(sem, entry))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if len(tasks) >= self.cfg.concurrency:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancelled: abandon deliveries in flight. Their entries stay pending and unacknowledged,
            # so another forwarder claims them; nothing is acknowledged that was not accepted.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _next_batch(self, room: int) -> list[OutboxEntry]:
        if room <= 0:
            return []
        now = time.time()
        batch = await self.outbox.due_retries(self.consumer, now, count=room)
        if now - self._last_claim >= min(self.cfg.claim_idle_s / 2, 5.0):
            self._last_claim = now
            self._claim_cursor, claimed = await self.outbox.claim_stale(
                self.consumer, int(self.cfg.claim_idle_s * 1000), self._claim_cursor, count=room)
            batch += [e for e in claimed if e.entry_id not in self._inflight]
        if len(batch) < room:
            batch += await self.outbox.read_new(self.consumer, room - len(batch), 0)
        if not batch:
            # Idle: wait here rather than in a blocking XREADGROUP. A cancellation that lands inside a
            # blocked Redis read can be lost (the read then hangs past its own timeout); in a sleep it
            # never is, so shutdown and a killed forwarder stay prompt.
            await asyncio.sleep(self.cfg.block_ms / 1000)
        return batch

    async def _guarded(self, sem: asyncio.Semaphore, entry: OutboxEntry) -> None:
        try:
            async with sem:
                await self.process(entry)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis trouble while finishing: the entry stays pending and is claimed again later.
            log.exception("delivery bookkeeping failed", extra={"event": "forwarder_error",
                                                                 "order_id": entry.key})
        finally:
            self._inflight.discard(entry.entry_id)

    async def process(self, entry: OutboxEntry) -> None:
        state = await self.outbox.order_state(entry.key, entry.case_id)
        if state.get("status") in ("delivered", "dead") or (state.get("entry") and state["entry"] != entry.entry_id):
            # A copy left over from before a crash, or superseded by a redrive: nothing to send.
            await self.outbox.ack_only(entry)
            return
        attempt = await self.outbox.begin_attempt(entry)
        try:
            delivery: Delivery = await self.backend.deliver(entry.order, entry.key)
        except PermanentError as exc:
            await self._fail(entry, attempt, f"refused: {exc}", permanent=True)
            return
        except (TransientError, OSError) as exc:
            await self._fail(entry, attempt, str(exc) or type(exc).__name__, permanent=False)
            return
        except Exception as exc:
            # A bug in the backend code or an answer it did not foresee. Left to _guarded, the entry would
            # stay "sending", be claimed again every claim_idle_s and POSTed forever, never dead-lettered;
            # as a failed attempt it gets the backoff and max_attempts like any other. The exception's text
            # may hold the request (URL with api_key, the citizen's number), so only its type and where it
            # was raised go to the log and the dead letter.
            error = f"unexpected {type(exc).__name__} in backend {self.backend.name} at {_origin(exc)}"
            log.warning("backend raised unexpectedly", extra={"event": "forwarder_backend_error",
                                                               "order_id": entry.key, "attempt": attempt,
                                                               "error": error})
            await self._fail(entry, attempt, error, permanent=False)
            return
        if await self.outbox.mark_delivered(entry, delivery.ref):
            self.delivered += 1
            log.info("order delivered", extra={"event": "order_delivered", "order_id": entry.key,
                                               "ref": delivery.ref, "attempt": attempt})
            if self.on_delivered is not None:
                try:
                    await self.on_delivered(entry.case_id, entry.key, delivery.ref, self.backend.name)
                except Exception:
                    log.exception("delivered hook failed", extra={"event": "delivered_hook_failed",
                                                                  "order_id": entry.key})

    async def _fail(self, entry: OutboxEntry, attempt: int, error: str, *, permanent: bool) -> None:
        self.failed_attempts += 1
        if permanent or attempt >= self.cfg.max_attempts:
            dead_id = await self.outbox.bury(entry, attempt, error)
            if not dead_id:
                return
            self.buried += 1
            log.warning("order dead-lettered", extra={"event": "order_dead", "order_id": entry.key,
                                                      "attempts": attempt, "error": error[:200]})
            if self.on_dead is not None:
                try:
                    await self.on_dead(entry.case_id, entry.key, error, attempt)
                except Exception:
                    log.exception("dead hook failed", extra={"event": "dead_hook_failed", "order_id": entry.key})
            return
        delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
        await self.outbox.schedule_retry(entry, time.time() + delay, error)
        log.info("order delivery failed, will retry", extra={"event": "order_retry", "order_id": entry.key,
                                                              "attempt": attempt, "delay_s": round(delay, 2),
                                                              "error": error[:200]})
