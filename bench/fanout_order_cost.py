"""Worker CPU of reading and ordering a noisy video's waiting watches, as a fan-out does:
``python bench/fanout_order_cost.py``.

The noisy-neighbour scenario's shape (``bench/noisy.py``): two videos, each with 5,000
watches to one origin, 500 to a second and 500 to a third. Both fan-outs run at once on one
event loop against a fresh Redis, as a poller runs them: the first page of a video's waiting
watches (``HSCAN``), its round-robin order, the rest read in the background while chunks of
32 are taken (the first two origins known slow: their watches go last). Prints the median
process CPU (ms) of the two fan-outs' reading and ordering over 15 rounds. It measures the
checkout it sits in: for a before/after, copy it into a checkout of the other commit
(``git archive REV | tar -x -C /tmp/old``) and run it there too.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from redis.asyncio import Redis  # noqa: E402

from relay import constants as c  # noqa: E402
from relay.devtools.embedded_redis import RedisServer  # noqa: E402
from relay.store import Store  # noqa: E402
from relay.store.codec import fan_out_order  # noqa: E402
from relay.store.videos import Videos  # noqa: E402
from workers.fanout import FanOutOrder, Pages  # noqa: E402

GROUPS = {"acme:slowtag": 5000, "acme:holetag": 500, "acme:healthy": 500}
SLOW = {"slowtag", "holetag"}
CHUNK = 32


async def _one(videos: Videos, video: str) -> int:
    """One fan-out's reading and ordering: the watches handed out."""
    cursor, entries = await videos.waiting_page(video)
    pages = Pages()
    rest = asyncio.create_task(videos.waiting_rest(video, cursor, dict(entries), pages.add))
    order = FanOutOrder(fan_out_order(entries), rest, pages)
    handed = 0
    while not order.done:
        await order.fill()
        chunk = order.take(CHUNK, lambda tag: -1 if tag in SLOW else None)
        if not chunk:
            chunk = order.take(CHUNK)
            if not chunk and not order.done:
                await order.fill(wait=True)
        handed += len(chunk)
        await asyncio.sleep(0)
    return handed


async def main(rounds: int) -> None:
    server = RedisServer.start()
    try:
        redis = Redis.from_url(server.url, decode_responses=True)
        videos = Store(redis).videos
        for video in ("a", "b"):
            waiting = {
                f"wat_{secrets.token_hex(11)}": entry
                for entry, n in GROUPS.items()
                for _ in range(n)
            }
            await redis.hset(c.VIDEO_WATCHES_KEY.format(video), mapping=waiting)
        total = sum(GROUPS.values())
        cpu = []
        for _ in range(rounds):
            t0 = time.process_time()
            handed = await asyncio.gather(_one(videos, "a"), _one(videos, "b"))
            cpu.append((time.process_time() - t0) * 1000)
            assert handed == [total, total], handed
        print(
            f"two fan-outs of {total:,} waiting watches (3 origins): reading and ordering "
            f"{statistics.median(cpu):.1f} ms of CPU (median of {rounds}; min {min(cpu):.1f})"
        )
        await redis.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    asyncio.run(main(parser.parse_args().rounds))
