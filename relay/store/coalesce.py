"""Script calls made in one turn of the event loop, sent to Redis as one pipeline.

An API process under load starts many requests per turn of its loop, and each ran its
script in a round trip of its own: a pooled connection checked out and checked for stray
data, one command packed, sent and read back. redis-py spends more CPU on that than on the
command itself (a quarter of the API's CPU per registration, docs/performance.md). The
calls queued in one turn are sent together the next turn instead: one connection, one
write, their answers read in order. A call alone waits that one turn too.

Each call keeps its own outcome: a script's error reaches its own caller only; a lost
connection fails every call of that pipeline, as it would have failed each alone (and,
like a lone call, one the connection's retry sends again may run twice: every script is
safe to run twice, docs/guarantees.md). A caller that stops waiting (its request's
deadline) before its turn is sent is left out; once every caller of a turn has stopped
waiting, the turn's Redis work is cancelled, as a lone call's was: a stalled Redis does
not collect calls whose requests were already answered 503 and run them when it wakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
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
        self._next: asyncio.Task[None] | None = None  # the task that sends this turn's calls
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run *script* with *keys* and *args*; its reply (or its error)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._next is None or self._next.done():  # the first call of this turn
            # (done: cancelled before it ran, as a loop closing does; it sends nothing)
            self._next = task = asyncio.ensure_future(self._drain())  # (it runs next turn)
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._queued.append((script, keys, args, answer))
        return await answer

    async def _drain(self) -> None:
        queued, self._queued, self._next = self._queued, [], None
        calls = [call for call in queued if not call[3].done()]  # callers that gave up
        if not calls:
            return
        task = asyncio.current_task()
        answers = [answer for *_, answer in calls]

        def gave_up(answer: asyncio.Future[Any]) -> None:
            if answer.cancelled() and task and all(a.done() for a in answers):
                task.cancel()  # nobody waits for this turn any more

        for answer in answers:
            answer.add_done_callback(gave_up)
        try:
            if len(calls) <= MAX_CALLS:
                await self._send(calls)  # (gather would start it a turn later)
            else:
                chunks = range(0, len(calls), MAX_CALLS)
                await asyncio.gather(*(self._send(calls[at : at + MAX_CALLS]) for at in chunks))
        except asyncio.CancelledError:
            for answer in answers:
                answer.cancel()
            raise

    async def _send(self, calls: list[Call], *, loaded: bool = False) -> None:
        if len(calls) == 1:
            await _settle(calls[0][3], self._one(*calls[0][:3]))
            return
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as error:  # the connection: every call of the pipeline
            for *_, answer in calls:
                if not answer.done():
                    answer.set_exception(error)
            return
        again = []
        for call, reply in zip(calls, replies, strict=True):
            answer = call[3]
            if isinstance(reply, NoScriptError) and not answer.done():
                again.append(call)  # Redis restarted or flushed its scripts
            elif answer.done():
                continue
            elif isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)
        if again and loaded:  # flushed again meanwhile: one by one, each loading its own
            await asyncio.gather(*(_settle(c[3], self._one(*c[:3])) for c in again))
        elif again:
            try:
                for script in {c[0].sha: c[0] for c in again}.values():
                    await self.redis.script_load(script.script)
            except Exception as error:
                for *_, answer in again:
                    if not answer.done():
                        answer.set_exception(error)
                return
            await self._send(again, loaded=True)

    async def _one(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return await script(keys=list(keys), args=list(args))


async def _settle(answer: asyncio.Future[Any], call: Awaitable[Any]) -> None:
    """Await *call* and hand its outcome to *answer* (unless its caller gave up)."""
    try:
        reply = await call
    except Exception as error:
        if not answer.done():
            answer.set_exception(error)
        return
    if not answer.done():
        answer.set_result(reply)
