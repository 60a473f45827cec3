"""Stopping background tasks at shutdown reliably.

A cancellation delivered while redis-py is inside a socket read can be swallowed; a worker loop then
goes back to sleep and the app's cleanup waits forever. Re-delivering the cancel until the task ends
is safe for our workers, which only sleep or await Redis between steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("hotline.tasks")


async def stop_tasks(tasks: Iterable[asyncio.Task], *, grace_s: float = 5.0, retry_s: float = 0.5) -> None:
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=retry_s)
        if pending and loop.time() > deadline:
            log.error("background tasks did not stop", extra={"event": "tasks_stuck",
                                                              "tasks": [t.get_name() for t in pending]})
            return
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception(),
                      extra={"event": "task_failed", "task": task.get_name()})
