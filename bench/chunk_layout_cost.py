"""What the chunk layout would cost Redis per delivery, measured on a prototype:
``python bench/chunk_layout_cost.py``.

docs/scaling.md ("A layout that would come near it") describes, on paper, a data model in
which Redis does a chunk's work once per chunk: the chunk's event is one hash, its watch ids
one packed value, its attempt records one packed value, the chunk one member of the
delivery schedule and of the tenant's index of final watches. This measures that layout's
common path -- every first attempt a 2xx -- with two prototype scripts
(``bench/prototypes/chunk_*.lua``, not the product's), beside the product's own scripts on
the same watches in the same run (:func:`redis_cost.run`), so the two are compared on one
machine at one moment.

Per delivery, the prototype keeps the work no layout can drop: the video's waiting hash is
checked for every watch (a cancel may have come first) and its entry pointed at the chunk,
the watch's secrets are read for the sender (and its registration, with one MGET a chunk,
as the product's ``finalize`` does), its expiry member is dropped. What it leaves
out is the exceptions' path (a retry, a failure, a cancel or a link refresh would take a
watch out of its chunk into a state of its own, as today) and every reader of a watch (the
API, the dashboard, retention, recovery), which would have to find a watch's state through
the waiting hash and its chunk: the prototype measures the cost of the layout's writes, not
a working relay.

``--callgrind`` counts instructions (valgrind; the same for the same work on a busy or an
idle machine; user space only); without it, Redis CPU is Δ(utime + stime) of its process,
the kernel's share of each round trip and of the AOF's writes included.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from redis_cost import REDIS_CONF, measured, register, run, script_durations  # noqa: E402

from relay import constants as c  # noqa: E402
from relay.domain import attempts  # noqa: E402
from relay.domain.clock import now_ms  # noqa: E402

PROTOTYPES = HERE / "prototypes"
TENANT = "bench"
VIDEO = "vid_cost"


async def chunked(
    n: int,
    chunk: int,
    per_settle: int,
    gate: int,
    config: Path | None,
    callgrind: bool,
    calls: bool,
) -> dict[str, float]:
    """Per-step Redis CPU (µs per watch) of the prototype on *n* watches in chunks of
    *chunk*, *per_settle* chunks settled a call, claim checks of *gate* chunks; with
    *callgrind*, instructions per watch."""
    async with measured(config, callgrind) as (redis, store, meter):
        finalize = redis.register_script((PROTOTYPES / "chunk_finalize.lua").read_text())
        settle = redis.register_script((PROTOTYPES / "chunk_settle.lua").read_text())
        await register(store, n)
        ids = [w for w, _ in await store.videos.waiting(VIDEO)]
        for script in (finalize, settle):  # loaded before the meter
            await redis.script_load(script.script)
        if calls:
            await redis.config_set("slowlog-log-slower-than", 0)
            await redis.config_set("slowlog-max-len", 4 * n)
            await redis.slowlog_reset()
        at = now_ms()
        event = f"clips.ready|{at}|100.0|completed|"
        c1 = meter()
        chunks: list[tuple[str, str, int]] = []  # member, token, watches
        for number, start in enumerate(range(0, n, chunk)):
            member = f"c:{VIDEO}:{at}:{number}"
            part = ids[start : start + chunk]
            got = await finalize(
                keys=[
                    c.DELIVERY_SCHEDULE_KEY,
                    c.VIDEO_WATCHES_KEY.format(VIDEO),
                    c.WATCH_COUNTS_KEY,
                    c.PREFIX + "c:" + member,
                    c.EXPIRY_SCHEDULE_KEY,
                    c.TENANT_COUNTS_KEY.format(TENANT),
                ],
                args=[member, 60_000, event, c.WATCH_PREFIX, *part],
            )
            # the sender's registrations, as the product's finalize reads them (one MGET)
            await redis.mget([c.REGISTRATION_KEY.format(w) for w in got[1::2]])
            chunks.append((member, got[0], (len(got) - 1) // 2))
        c2 = meter()
        for start in range(0, len(chunks), gate):
            await redis.zmscore(
                c.DELIVERY_SCHEDULE_KEY, [m for m, _, _ in chunks[start : start + gate]]
            )
        c3 = meter()
        record = attempts.record(1, now_ms(), 204, None, 3.2, None)
        minute = c.TENANT_MINUTE_KEY.format(TENANT, at // 60_000)
        for start in range(0, len(chunks), per_settle):
            part_chunks = chunks[start : start + per_settle]
            args: list[str | int | bytes] = []
            for member, token, count in part_chunks:
                args += [member, token, count, b"\n".join([record] * count)]
            await settle(
                keys=[
                    c.DELIVERY_SCHEDULE_KEY,
                    c.WATCH_COUNTS_KEY,
                    c.TENANT_FINAL_KEY.format(TENANT, "delivered"),
                    c.TENANT_COUNTS_KEY.format(TENANT),
                    minute,
                    *(c.PREFIX + "c:" + m for m, _, _ in part_chunks),
                ],
                args=args,
            )
        c4 = meter()
        made = sum(count for _, _, count in chunks)
        if made != n:
            raise SystemExit(f"the prototype made {made} events of {n}")
        used = (await redis.info("memory"))["used_memory"]
        names = {finalize.sha: "finalize", settle.sha: "settle"}
        durations = script_durations(await redis.slowlog_get(4 * n), names) if calls else {}
        per = 1 / n
        return {
            "finalize": (c2 - c1) * per,
            "gate": (c3 - c2) * per,
            "settle": (c4 - c3) * per,
            "delivery": (c4 - c1) * per,
            "bytes": used / n,
            **durations,
        }


def main() -> None:
    """Print the product's figures and the prototype's, with and without AOF."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=20_000)
    parser.add_argument(
        "--chunks",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[32, 64, 128, 200],
        help="chunk sizes to try (comma-separated)",
    )
    parser.add_argument("--per-settle", type=int, default=1, help="chunks settled a call")
    parser.add_argument("--gate", type=int, default=1, help="chunks a claim check reads")
    parser.add_argument("--calls", action="store_true", help="median and slowest call (µs)")
    parser.add_argument("--callgrind", action="store_true", help="instructions, not CPU")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, alternated")
    args = parser.parse_args()
    what = "Redis instructions" if args.callgrind else "Redis CPU, µs"
    form = ",.0f" if args.callgrind else ".1f"
    print(f"{what} per delivery ({args.watches:,} watches of one video, first attempts all 2xx)")
    print(f"{'redis':7} {'layout':24} finalize   gate settle delivery  B/watch  calls (µs)")
    for config, label in ((REDIS_CONF, "AOF"), (None, "no AOF")):
        for _ in range(args.rounds):
            f = asyncio.run(run(args.watches, 32, True, config, 8, args.calls, args.callgrind))
            calls = "".join(
                f"  {k} {f[k + ' call']:.0f}" for k in ("finalize", "settle") if k + " call" in f
            )
            print(
                f"{label:7} {'product (batches of 32)':24} {f['finalize']:8{form}}"
                f" {f['gate']:6{form}} {f['settle']:6{form}} {f['delivery']:8{form}}"
                f" {f['bytes']:8,.0f}{calls}"
            )
            for size in args.chunks:
                p = asyncio.run(
                    chunked(
                        args.watches,
                        size,
                        args.per_settle,
                        args.gate,
                        config,
                        args.callgrind,
                        args.calls,
                    )
                )
                calls = "".join(
                    f"  {k} {p[k + ' call']:.0f} (max {p[k + ' max']:.0f})"
                    for k in ("finalize", "settle")
                    if k + " call" in p
                )
                print(
                    f"{label:7} {'chunks of ' + str(size):24} {p['finalize']:8{form}}"
                    f" {p['gate']:6{form}} {p['settle']:6{form}} {p['delivery']:8{form}}"
                    f" {p['bytes']:8,.0f}{calls}"
                )


if __name__ == "__main__":
    main()
