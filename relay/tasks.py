"""Ending background tasks without hanging.

On Python 3.11 a cancellation that arrives as an ``asyncio.timeout`` fires can be swallowed
(turned into ``TimeoutError``), and redis-py then retries: "cancel, then await" may wait
forever. Background loops here are stopped cooperatively first; :func:`finish` bounds the
wait and cancels only as a last resort, never waiting unboundedly on a cancelled task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from relay import logs

log = logs.get("relay.tasks")


async def finish(task: asyncio.Task[None], grace_s: float) -> bool:
    """Wait up to *grace_s* for *task*; then cancel it and wait a little more.

    Returns True when the task ended.
    """
    return not await finish_all([task], grace_s)


async def finish_all(tasks: Collection[asyncio.Task[None]], grace_s: float) -> int:
    """Like :func:`finish` for several tasks; returns how many would not end."""
    if not tasks:
        return 0
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    if not pending:
        return 0
    for task in pending:
        task.cancel()
    _, pending = await asyncio.wait(pending, timeout=5.0)
    for task in pending:
        log.error("task would not end", task=task.get_name())
    return len(pending)
