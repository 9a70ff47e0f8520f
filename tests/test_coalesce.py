"""relay.store.coalesce: script calls of one loop turn share one pipeline, each keeping its
own outcome (real Redis)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from relay.devtools.embedded_redis import RedisServer, free_port
from relay.store.coalesce import MAX_CALLS, Coalescer
from relay.store.connection import connect

# a script that answers its argument, or fails when it is asked to, and counts its calls
ECHO = """
redis.call('INCR', KEYS[1])
if string.sub(ARGV[1], 1, 3) == 'bad' then return redis.error_reply('refused ' .. ARGV[1]) end
return ARGV[1]
"""


def connections(redis: Redis) -> int:
    """Connections the client's pool has opened (idle and in use)."""
    pool = redis.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)  # type: ignore[attr-defined]


async def test_calls_of_one_turn_share_a_connection_and_each_gets_its_own_reply(
    redis: Redis,
) -> None:
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)
    replies = await asyncio.gather(*(coalescer.call(echo, ["n"], [f"v{i}"]) for i in range(200)))
    assert replies == [f"v{i}" for i in range(200)]
    assert await redis.get("n") == "200"
    # 200 calls at once, one by one, would have opened a connection each
    assert connections(redis) <= -(-200 // MAX_CALLS)


async def test_a_script_error_reaches_its_own_caller_only(redis: Redis) -> None:
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)
    got = await asyncio.gather(
        *(coalescer.call(echo, ["n"], ["bad" if i % 3 == 0 else f"ok{i}"]) for i in range(9)),
        return_exceptions=True,
    )
    for i, reply in enumerate(got):
        if i % 3 == 0:
            assert isinstance(reply, ResponseError)
            assert "refused bad" in str(reply)
        else:
            assert reply == f"ok{i}"
    assert await redis.get("n") == "9"  # each ran once


async def test_scripts_flushed_from_redis_are_loaded_again(redis: Redis) -> None:
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)
    assert await coalescer.call(echo, ["n"], ["first"]) == "first"
    await redis.script_flush()
    replies = await asyncio.gather(*(coalescer.call(echo, ["n"], [f"v{i}"]) for i in range(5)))
    assert replies == [f"v{i}" for i in range(5)]
    assert await redis.get("n") == "6"  # no call ran twice


async def test_a_caller_that_gives_up_leaves_the_others_alone(redis: Redis) -> None:
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)
    calls = [asyncio.ensure_future(coalescer.call(echo, ["n"], [f"v{i}"])) for i in range(6)]
    calls[2].cancel()
    got = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(got[2], asyncio.CancelledError)
    assert [g for i, g in enumerate(got) if i != 2] == ["v0", "v1", "v3", "v4", "v5"]
    assert await redis.get("n") == "5"  # given up before its turn: never sent


async def test_a_lone_call_and_calls_one_after_another_go_straight_through(redis: Redis) -> None:
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)
    for i in range(3):
        assert await coalescer.call(echo, ["n"], [f"v{i}"]) == f"v{i}"
    with pytest.raises(ResponseError, match="refused bad"):
        await coalescer.call(echo, ["n"], ["bad"])


async def test_redis_unreachable_fails_every_call_of_the_turn() -> None:
    redis = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        echo = redis.register_script(ECHO)
        coalescer = Coalescer(redis)
        got = await asyncio.gather(
            *(coalescer.call(echo, ["n"], [f"v{i}"]) for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(g, RedisConnectionError) for g in got)
        # and a lone call the same way
        with pytest.raises(RedisConnectionError):
            await coalescer.call(echo, ["n"], ["alone"])
    finally:
        await redis.aclose()


async def test_calls_given_up_on_a_stalled_redis_are_not_run_when_it_wakes() -> None:
    """Redis stalls (SIGSTOP); 20 turns of 3 calls each give up after 50 ms, as requests
    past their deadline do. Nothing is left waiting, and once Redis wakes at most the one
    turn already written to its socket runs -- not all 60, as when each turn's work went on
    without its callers."""
    server = RedisServer.start()
    redis = connect(server.url, read_timeout=None)  # as the API's client: its own deadlines
    try:
        echo = redis.register_script(ECHO)
        await redis.script_load(ECHO)
        coalescer = Coalescer(redis)
        assert await coalescer.call(echo, ["n"], ["warm"]) == "warm"  # a pooled connection
        server.process.send_signal(signal.SIGSTOP)
        try:
            for turn in range(20):
                got = await asyncio.gather(
                    *(
                        _within(0.05, coalescer.call(echo, ["n"], [f"{turn}.{i}"]))
                        for i in range(3)
                    ),
                    return_exceptions=True,
                )
                assert all(isinstance(g, TimeoutError) for g in got), got
            await asyncio.sleep(0)
            assert not coalescer._sending  # nothing left waiting on the stalled server
        finally:
            server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.3)
        assert int(await redis.get("n")) - 1 <= 3
    finally:
        await redis.aclose()
        server.stop()


async def _within(seconds: float, call: Awaitable[Any]) -> Any:
    async with asyncio.timeout(seconds):
        return await call


def test_a_turn_cancelled_before_it_ran_does_not_hold_up_the_next(
    redis_server: RedisServer,
) -> None:
    """A loop closed with a turn not yet sent (asyncio.run cancels it): calls made later,
    on another loop, are sent."""
    redis = connect(redis_server.url)
    echo = redis.register_script(ECHO)
    coalescer = Coalescer(redis)

    left: list[asyncio.Future[Any]] = []

    async def closed_early() -> None:
        left.append(asyncio.ensure_future(coalescer.call(echo, ["n"], ["never"])))  # pending

    asyncio.run(closed_early())
    assert left[0].cancelled()

    async def later() -> Any:
        try:
            return await asyncio.wait_for(coalescer.call(echo, ["n"], ["later"]), 5)
        finally:
            await redis.aclose()

    assert asyncio.run(later()) == "later"
