"""Script calls made in one turn of the event loop, sent to Redis as one pipeline.

An API process under load starts many requests per turn of its loop, and each ran its
script in a round trip of its own: a pooled connection checked out and checked for stray
data, one command packed, sent and read back. redis-py spends more CPU on that than on the
command itself (a quarter of the API's CPU per registration, docs/performance.md). The
calls queued in one turn are sent together instead: one connection, one write, their
answers read in order. A call alone in its turn goes straight through, as before, so an
idle API waits for nothing.

Each call keeps its own outcome: a script's error reaches its own caller only; a lost
connection fails every call of that pipeline, as it would have failed each alone (and,
like a lone call, one the connection's retry sends again may run twice: every script is
safe to run twice, docs/guarantees.md). A caller that stops waiting (its request's
deadline) leaves the others alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Arg = str | int | float | bytes
Call = tuple[AsyncScript, Sequence[str], Sequence[Arg], "asyncio.Future[Any]"]
MAX_CALLS = 64  # calls per pipeline at most; a busier turn sends several


class Coalescer:
    """Send the script calls of one loop turn through one pipeline of *redis*."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run *script* with *keys* and *args*; its reply (or its error)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._queued:  # the first call of this turn: the rest join it
            task = asyncio.ensure_future(self._drain())  # (its first step: the next turn)
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append((script, keys, args, answer))
        return await answer

    async def _drain(self) -> None:
        queued, self._queued = self._queued, []
        await asyncio.gather(
            *(self._send(queued[at : at + MAX_CALLS]) for at in range(0, len(queued), MAX_CALLS))
        )

    async def _send(self, calls: list[Call]) -> None:
        calls = [call for call in calls if not call[3].done()]  # callers that gave up
        if len(calls) == 1:
            script, keys, args, answer = calls[0]
            await _settle(answer, self._one(script, keys, args))
            return
        if not calls:
            return
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as error:  # the connection: every call of the pipeline
            for *_, answer in calls:
                if not answer.done():
                    answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (script, keys, args, answer), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):  # Redis restarted or flushed its scripts
                await _settle(answer, self._one(script, keys, args))
            elif isinstance(reply, Exception):
                if not answer.done():
                    answer.set_exception(reply)
            elif not answer.done():
                answer.set_result(reply)

    async def _one(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await script(keys=list(keys), args=list(args))


async def _settle(answer: asyncio.Future[Any], call: Any) -> None:
    """Await *call* and hand its outcome to *answer* (unless its caller gave up)."""
    try:
        reply = await call
    except Exception as error:
        if not answer.done():
            answer.set_exception(error)
        return
    except BaseException as error:
        if not answer.done():
            answer.set_exception(error)
        raise
    if not answer.done():
        answer.set_result(reply)
