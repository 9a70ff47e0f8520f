"""Redis CPU per delivery, step by step, with nothing else running: ``python bench/redis_cost.py``.

The store's three steps of a delivery, driven directly (no worker, no HTTP) on a fresh Redis
with the product's ``config/redis.conf`` (AOF) and without it: N watches of one video are
registered; ``finalize`` gives them their events in chunks (claimed as a worker that keeps
up claims them, or left due for the claim step); ``claim`` reads them back as another worker
would; ``gate`` checks each claim right before its attempt (one ``ZMSCORE`` per batch of
``--gate`` attempts starting together, :mod:`workers.delivery.gate`); ``settle`` records one
2xx attempt each. Redis CPU is Δ(utime + stime) of the Redis
process per watch, per step. This is the floor the end-to-end ``scale`` scenario adds the
worker's and the receivers' share of the cores to.

``--callgrind`` runs the server under valgrind's callgrind and reports the instructions it
ran per watch and step instead: the same count for the same work however busy the machine
is, so a change to a script is measured in one run of each version, not in rounds of
alternating noisy ones. It counts user space only (not the kernel's share of a round trip
or of the AOF's writes) and runs the server ~50x slower: use a few thousand watches.

``--without PART[,PART...]`` runs the scripts with parts of their work taken out
(:data:`ABLATIONS`: the watch's own writes and read, its members of the delivery schedule,
of the tenant's index of final watches and of the expiry schedule, ``settle``'s counters,
or everything ``settle`` does after reading its arguments): what a part costs is the
difference from a run without the option. The figures of such a run are not a working
relay's (a delivery without its writes is not recorded); they say where a delivery's
instructions go (docs/scaling.md, "Where a delivery's instructions go").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

from redis.asyncio import Redis  # noqa: E402

from relay.devtools.embedded_redis import RedisServer  # noqa: E402
from relay.domain import attempts  # noqa: E402
from relay.domain.clips import ClipSet  # noqa: E402
from relay.domain.clock import now_ms  # noqa: E402
from relay.domain.delivery import AttemptResult, DeliveryClaim, FinalEvent  # noqa: E402
from relay.domain.ids import new_watch_id  # noqa: E402
from relay.domain.signing import generate_secret  # noqa: E402
from relay.domain.watch import SecretEntry, Watch  # noqa: E402
from relay.store import Store, scripts  # noqa: E402
from relay.store.scripts import source  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SCRIPTS = ("finalize", "claim_due", "settle")
REDIS_CONF = HERE.parent / "config" / "redis.conf"
# --without: per part, (script, the text taken out, what stands in its place)
ABLATIONS: dict[str, list[tuple[str, str, str]]] = {
    "schedule": [  # the delivery schedule's member per watch: ZADD, ZMSCORE, ZREM
        ("finalize", "redis.call('ZADD', KEYS[1], 'NX', unpack(scheduled))", ""),
        (
            "settle",
            "local held = redis.call('ZMSCORE', KEYS[1], unpack(members))",
            "local held = {} for k = 1, n do held[k] = ARGV[4 + (k - 1) * W + 1] end",
        ),
        ("settle", "if #zrem > 0 then redis.call('ZREM', KEYS[1], unpack(zrem)) end", ""),
    ],
    "event": [("finalize", "redis.call('HSET', key, 'st', st, 'ev', ev)", "")],  # its HSET
    "secrets": [("finalize", "redis.call('HGET', key, 'secrets')", "false")],  # its HGET
    "record": [("settle", "redis.call('HSET', key, 'st', st, slot, ARGV[i + 4])", "")],
    "index": [  # the tenant's index of final watches, a member per delivered watch
        (
            "settle",
            "for index, members in pairs(finals) do redis.call('ZADD', index, unpack(members)) end",
            "",
        ),
    ],
    "expiry": [("finalize", "redis.call('ZREM', KEYS[6], unpack(made))", "")],
    "counters": [  # settle's once-a-call part: the schedule's ZREM, the final index, the
        # status counters, the dashboard's minute counts
        (
            "settle",
            "-- the schedule, the indexes and the counters change once per call",
            "do return statuses end",
        )
    ],
    "settle": [  # settle's whole body: what is left is its request and its reply
        (
            "settle",
            "local members = {}",
            "do local s = {} for k = 1, n do s[k] = 'delivered' end return s end\n"
            "local members = {}",
        ),
    ],
}

ABLATIONS["writes"] = [*ABLATIONS["event"], *ABLATIONS["secrets"], *ABLATIONS["record"]]


def ablate(parts: list[str]) -> None:
    """Run the scripts without *parts* (:data:`ABLATIONS`) from now on in this process."""
    edits: dict[str, list[tuple[str, str]]] = {}
    for part in parts:
        for name, old, new in ABLATIONS[part]:
            if (old, new) not in edits.setdefault(name, []):  # ("event,writes": once)
                edits[name].append((old, new))

    def ablated(name: str) -> str:
        text = source(name)
        for old, new in edits.get(name, []):
            if old not in text:
                raise SystemExit(f"--without: {name}.lua no longer has {old!r}")
            text = text.replace(old, new)
        return text

    scripts.source = ablated  # type: ignore[assignment]


def cpu_s(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Instructions:
    """The instructions a server run under callgrind has run so far: each read asks for a
    dump (the counts since the last one, in the next numbered file) and adds it up."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.seen: set[Path] = set()
        self.total = 0

    def __call__(self) -> float:
        subprocess.run(
            ["callgrind_control", "--dump", str(self.pid)],
            check=True,
            capture_output=True,
        )
        for part in sorted(set(self.out.glob(f"cg.{self.pid}.*")) - self.seen):
            self.seen.add(part)
            for line in part.read_text().splitlines():
                if line.startswith("totals:"):
                    self.total += int(line.split()[1])
        return float(self.total)


def valgrind_prefix(out: Path) -> list[str]:
    """The command line that runs the server under callgrind, its counts dumped into *out*."""
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}/cg.%p",
        "--dump-instr=no",
    ]


Meter = Callable[[], float]


@contextlib.asynccontextmanager
async def measured(
    config: Path | None, callgrind: bool
) -> AsyncIterator[tuple[Redis, Store, Meter]]:
    """A fresh Redis (with *config*; under callgrind with *callgrind*), a client, the store
    on it and its meter: Redis' CPU so far in µs, or the instructions it has run."""
    workdir = Path(tempfile.mkdtemp())
    prefix = valgrind_prefix(workdir) if callgrind else None
    server = RedisServer.start(workdir=workdir, config=config, prefix=prefix)
    redis = Redis.from_url(server.url, decode_responses=True)
    pid = server.process.pid
    meter: Meter = Instructions(pid, workdir) if callgrind else lambda: cpu_s(pid) * 1e6
    try:
        yield redis, Store(redis), meter
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def register(store: Store, n: int) -> None:
    """Register *n* watches of one video ("vid_cost", tenant "bench"), as the probe's: a
    ~55-character callback URL, a generated secret."""
    url = "http://127.0.0.1:8080/hook/" + "a" * 28  # ~55 characters, as in the probe
    for start in range(0, n, 500):
        part = [
            Watch(
                id=new_watch_id(),
                tenant="bench",
                video_id="vid_cost",
                callback_url=url,
                secrets=[SecretEntry(generate_secret())],
                created_ms=now_ms(),
            )
            for _ in range(min(500, n - start))
        ]
        await asyncio.gather(*(store.watches.create(w, expire_after_s=21600) for w in part))


async def run(
    n: int,
    chunk: int,
    claim_at_finalize: bool,
    config: Path | None,
    gate: int = 8,
    calls: bool = False,
    callgrind: bool = False,
) -> dict[str, float]:
    """Per-step Redis CPU (us per watch) for *n* watches; with *callgrind*, instructions
    per watch."""
    async with measured(config, callgrind) as (redis, store, meter):
        c0 = meter()
        await register(store, n)
        c1 = meter()
        clips = ClipSet(
            [
                {
                    "id": f"c{i}",
                    "score": 90 - i,
                    "status": "completed",
                    "downloadUrl": "https://cdn/" + "x" * 120,
                }
                for i in range(10)
            ]
        )
        at = now_ms()
        event = FinalEvent(
            "clips.ready", at, "completed", 100.0, clips_doc=clips.doc(), clips_ms=at
        )
        ids = [w for w, _ in await store.videos.waiting("vid_cost")]
        if calls:
            await redis.config_set("slowlog-log-slower-than", 0)  # every command's duration
            await redis.config_set("slowlog-max-len", 4 * n)
            await redis.slowlog_reset()
        claims: list[DeliveryClaim] = []
        for start in range(0, n, chunk):
            part = ids[start : start + chunk]
            _, got = await store.deliveries.finalize(
                "vid_cost", event, part, claim=len(part) if claim_at_finalize else 0, lease_s=60
            )
            claims += got
        c2 = meter()
        while True:
            rows = await store.deliveries.claim(limit=chunk, lease_s=60)
            if not rows:
                break
            claims += [row for row, _ in rows]
        c3 = meter()
        for start in range(0, len(claims), gate):
            await store.deliveries.claim_scores(
                [cl.watch_id for cl in claims[start : start + gate]]
            )
        c3g = meter()
        record = attempts.record(1, now_ms(), 204, None, 3.2, None)
        results = [
            AttemptResult(
                cl.watch_id,
                "bench",
                "clips.ready",
                cl.deadline_ms,
                "ok",
                1,
                record,
                1,
                first=cl.first,
            )
            for cl in claims
        ]
        for start in range(0, len(results), chunk):
            await store.deliveries.settle(results[start : start + chunk])
        c4 = meter() - (c3g - c3)  # (the settle step alone)
        used = (await redis.info("memory"))["used_memory"]
        durations = script_durations(await redis.slowlog_get(4 * n)) if calls else {}
        per = 1 / n
        return {
            "register": (c1 - c0) * per,
            "finalize": (c2 - c1) * per,
            "claim": (c3 - c2) * per,
            "gate": (c3g - c3) * per,
            "settle": (c4 - c3) * per,
            "delivery": (c4 - c1 + c3g - c3) * per,
            "bytes": used / n,
            **durations,
        }


def script_durations(
    entries: list[dict[str, object]], names: dict[str, str] | None = None
) -> dict[str, float]:
    """Median and longest wall time (µs) of one call of each script (*names*: its SHA1 ->
    its name; the delivery's scripts by default), from a ``SLOWLOG`` of every command:
    '<name> call' and '<name> max'."""
    if names is None:
        names = {
            hashlib.sha1(scripts.source(name).encode(), usedforsecurity=False).hexdigest(): name
            for name in SCRIPTS
        }
    took: dict[str, list[float]] = {}
    for entry in entries:
        words = bytes(entry["command"]).split(b" ")  # type: ignore[call-overload]
        name = names.get(words[1].decode(), "") if words[0].upper() == b"EVALSHA" else ""
        if name:
            took.setdefault(name, []).append(float(entry["duration"]))  # type: ignore[arg-type]
    return {
        **{f"{name} call": statistics.median(v) for name, v in took.items()},
        **{f"{name} max": max(v) for name, v in took.items()},
    }


def main() -> None:
    """Print the per-step figures, with and without AOF, claimed at finalize or not."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=20_000)
    parser.add_argument(
        "--chunk", type=int, default=32, help="watches per finalize and claim (settle: <= 32)"
    )
    parser.add_argument("--gate", type=int, default=8, help="attempts per claim check")
    parser.add_argument(
        "--calls",
        action="store_true",
        help="also the median wall time of one script call (SLOWLOG of every command: it"
        " costs Redis a little CPU itself)",
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="instructions per watch, counted by valgrind's callgrind, instead of CPU time",
    )
    parser.add_argument(
        "--without",
        type=lambda v: list(dict.fromkeys(p for p in v.split(",") if p)),
        default=[],
        metavar="PART[,PART...]",
        help=f"take parts of the scripts' work out: {', '.join(ABLATIONS)} (writes: event,"
        " secrets and record)",
    )
    args = parser.parse_args()
    unknown = set(args.without) - set(ABLATIONS)
    if unknown:
        parser.error(f"--without: no part {', '.join(sorted(unknown))} ({', '.join(ABLATIONS)})")
    ablate(args.without)
    if args.callgrind and not shutil.which("callgrind_control"):
        parser.error("--callgrind needs valgrind (Debian: apt install valgrind)")
    what = "Redis instructions" if args.callgrind else "Redis CPU, us"
    print(
        f"{what} per watch ({args.watches:,} watches, batches of {args.chunk},"
        f" claim checks of {args.gate})"
        + (f", without {', '.join(args.without)}" if args.without else "")
    )
    if "schedule" in args.without:
        print("(without the schedule's members nothing is left due: the 'claimed by another")
        print(" worker' rows claim and settle nothing)")
    print(f"{'redis':8} {'path':26} register finalize  claim   gate settle delivery  B/watch")
    for config, label in ((REDIS_CONF, "AOF"), (None, "no AOF")):
        for own, path in ((True, "claimed at finalize"), (False, "claimed by another worker")):
            f = asyncio.run(
                run(args.watches, args.chunk, own, config, args.gate, args.calls, args.callgrind)
            )
            per_call = "".join(
                f"  {name} {f[name + ' call']:.0f} µs/call"
                for name in SCRIPTS
                if name + " call" in f
            )
            form = ",.0f" if args.callgrind else ".1f"
            print(
                f"{label:8} {path:26} {f['register']:8{form}} {f['finalize']:8{form}}"
                f" {f['claim']:6{form}} {f['gate']:6{form}} {f['settle']:6{form}}"
                f" {f['delivery']:8{form}} {f['bytes']:8,.0f}" + per_call
            )


if __name__ == "__main__":
    main()
