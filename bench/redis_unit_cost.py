"""What one round trip and one write cost Redis here: ``python bench/redis_unit_cost.py``.

Sequential commands against a fresh server (the product's ``config/redis.conf`` with AOF,
then the server's defaults), nothing else running: Redis CPU (Δ utime + stime of its
process) per ``PING``, per no-op ``EVALSHA``, per watch of a script's two-field ``HSET``,
per member of a script's batched ``ZADD``, per member of a ``ZMSCORE`` of 8 and of a
``ZREM`` of 100, and per ``HSCAN`` call of a video's waiting watches (20,000 entries) at
``COUNT`` 1,000 and 2,000. It tells whether a step should be one more command or one more
write in a script that runs anyway (docs/performance.md, "what a round trip costs Redis"),
and how long a page of a fan-out's read may be.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from redis.asyncio import Redis  # noqa: E402
from redis_cost import REDIS_CONF, cpu_s  # noqa: E402

from relay.devtools.embedded_redis import RedisServer  # noqa: E402

N = 20_000
SCAN_PASSES = 40  # whole reads of the waiting hash per page size (the CPU clock ticks in 10 ms)
HSET_2 = """for i = 1, #ARGV do
  redis.call('HSET', 'w:' .. ARGV[i], 'st', 'delivering|0|0|1733333333333|||',
    'ev', 'clips.ready|1733333333333|100|completed|')
end"""
ZADD_BATCH = """local a = {}
for i = 1, #ARGV do a[2 * i - 1] = i; a[2 * i] = ARGV[i] end
redis.call('ZADD', 'sched', unpack(a))"""


async def measure(config: Path | None) -> list[tuple[str, float]]:
    """(step, Redis µs per call or per member) for one fresh server."""
    server = RedisServer.start(workdir=Path(tempfile.mkdtemp()), config=config)
    redis = Redis.from_url(server.url, decode_responses=True)
    pid = server.process.pid
    ids = [f"wat_{i:020d}" for i in range(N)]
    out: list[tuple[str, float]] = []

    async def step(label: str, per: int, run: Callable[[], Awaitable[object]]) -> None:
        c0 = cpu_s(pid)
        await run()
        out.append((label, (cpu_s(pid) - c0) * 1e6 / per))

    try:
        noop = await redis.script_load("return 1")
        hset = await redis.script_load(HSET_2)
        zadd = await redis.script_load(ZADD_BATCH)

        async def pings() -> None:
            for _ in range(N):
                await redis.ping()

        async def noops() -> None:
            for _ in range(N):
                await redis.evalsha(noop, 0)  # type: ignore[misc]

        def batched(sha: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                for k in range(0, N, 100):
                    await redis.evalsha(sha, 0, *ids[k : k + 100])  # type: ignore[misc]

            return run

        async def zmscores() -> None:
            for k in range(0, N, 8):
                await redis.zmscore("sched", ids[k : k + 8])

        async def zrems() -> None:
            for k in range(0, N, 100):
                await redis.zrem("sched", *ids[k : k + 100])

        await step("PING, per call", N, pings)
        await step("EVALSHA of 'return 1', per call", N, noops)
        await step("script HSET of 2 new fields, per watch (100 a call)", N, batched(hset))
        await step("the same, overwriting, per watch", N, batched(hset))
        await step("script ZADD, per member (100 a call)", N, batched(zadd))
        await step("ZMSCORE of 8, per member", N, zmscores)
        await step("ZREM of 100, per member", N, zrems)
        await redis.hset("waiting", mapping={w: f"acme:tag{i % 3}" for i, w in enumerate(ids)})

        def scans(count: int) -> Callable[[], Awaitable[int]]:
            return lambda: _scan(redis, "waiting", count, SCAN_PASSES)

        for count in (1000, 2000):
            calls = await _scan(redis, "waiting", count)
            label = f"HSCAN COUNT {count:,} of {N:,} entries, per call"
            await step(label, calls * SCAN_PASSES, scans(count))
        return out
    finally:
        await redis.aclose()
        server.stop()


async def _scan(redis: Redis, key: str, count: int, passes: int = 1) -> int:
    """Read the hash *key* whole *passes* times in ``HSCAN`` pages of *count*: the calls
    one pass made."""
    calls = 0
    for _ in range(passes):
        calls, cursor = 0, 0
        while True:
            cursor, _ = await redis.hscan(key, cursor, count=count)
            calls += 1
            if not cursor:
                break
    return calls


def main() -> None:
    """Print the table, with AOF and without."""
    for config, label in ((REDIS_CONF, "AOF (config/redis.conf)"), (None, "no AOF")):
        print(f"{label}: Redis CPU, µs ({N:,} each)")
        for name, us in asyncio.run(measure(config)):
            print(f"  {name:52} {us:6.1f}")


if __name__ == "__main__":
    main()
