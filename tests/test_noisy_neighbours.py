"""Noisy neighbours (issue 15 items 1 and 2), end to end: one worker, the simulator, the API,
the verifying receiver as the healthy origin, and two bad origins on loopback -- a slow one
(an aiohttp server answering after 5 s) and a black hole (``asyncio.start_server`` whose
handler reads and never answers, until told to answer).

Each of these fails on the code before per-origin lanes and the breaker (2cf3f91): there the
lanes took jobs first come, so hundreds of bad jobs ahead of the healthy ones held every
lane for the bad origins' full answer time (the healthy watches arrived 5-6 s late), and
every attempt to a dead origin was a connection held for the whole timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from relay.devtools.receiver import Receiver
from tests.conftest import ApiFactory, WorkerFactory, auth, eventually

Client = TestClient[web.Request, web.Application]


class BlackHole:
    """Accepts connections and reads, never answering -- until :attr:`answering`: then each
    request gets a 204 (keep-alive)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.answering = False
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if not self.answering:
                    await reader.read()  # never answers; ends when the client gives up
                    return
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.close()
            await self._server.wait_closed()


@pytest.fixture
async def black_hole() -> AsyncIterator[BlackHole]:
    hole = BlackHole()
    await hole.start()
    yield hole
    await hole.close()


@pytest.fixture
async def slow_origin() -> AsyncIterator[str]:
    """An origin answering 204 after 5 s."""

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(5)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def new_video(sim: Client) -> str:
    resp = await sim.post(
        "/_sim/videos",
        json={"timeline": [{"status": "processing", "after": 0}], "clips": [{"score": 90}]},
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def complete(sim: Client, video_id: str) -> float:
    resp = await sim.post(f"/_sim/videos/{video_id}/status", json={"status": "completed"})
    assert resp.status == 200
    return float((await resp.json())["at"])


async def register(api: Client, video_id: str, url: str, n: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(32)

    async def one() -> dict[str, Any]:
        async with sem:
            resp = await api.post(
                "/v1/watches", json={"videoId": video_id, "callbackUrl": url}, headers=auth()
            )
            assert resp.status == 201, await resp.text()
            got: dict[str, Any] = await resp.json()
            return got

    return list(await asyncio.gather(*(one() for _ in range(n))))


def arrivals(rec: Receiver, watches: list[dict[str, Any]]) -> list[float]:
    ids = {w["id"] for w in watches}
    return [e.received_at for e in rec.events if e.event["data"]["watchId"] in ids]


async def wait_arrived(rec: Receiver, watches: list[dict[str, Any]], timeout: float) -> list[float]:
    deadline = time.monotonic() + timeout
    while len(got := arrivals(rec, watches)) < len(watches) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return got


async def healthy_lateness(
    api: Client, sim: Client, rec: Receiver, video: str, base: str, wait_s: float = 10
) -> tuple[float, float]:
    """Register 20 healthy watches on *video* (last), complete it, and return when it was
    completed and how long after that the last of them arrived (every one must arrive
    within *wait_s*)."""
    healthy = await register(api, video, base + "/hook", 20)
    for w in healthy:
        rec.add_secret(w["secret"])
    await asyncio.sleep(0.3)  # polled at least once as processing
    at = await complete(sim, video)
    got = await wait_arrived(rec, healthy, wait_s)
    assert len(got) == 20
    return at, max(got) - at


async def statuses(api: Client, watches: list[dict[str, Any]]) -> list[str]:
    return [
        (await (await api.get(f"/v1/watches/{w['id']}", headers=auth())).json())["status"]
        for w in watches
    ]


async def attempts(api: Client, watch_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/v1/watches/{watch_id}/deliveries", headers=auth())
    rows: list[dict[str, Any]] = (await resp.json())["data"]
    return rows


async def test_healthy_watches_arrive_on_time_beside_a_slow_and_a_dead_origin(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: tuple[Receiver, str],
    slow_origin: str,
    black_hole: BlackHole,
) -> None:
    """200 watches to a 5 s origin and 200 to a black hole, then 20 healthy ones registered
    last, on one video: the healthy ones arrive within 3 s of ``completed`` -- and again on a
    second video while the bad origins' retries run. At most RELAY_ORIGIN_CONCURRENCY
    attempts reach a bad origin at once."""
    rec, base = receiver
    overrides = {"delivery_timeout": 6, "lease": 8, "retry_schedule": (1.0, 2.0, 30.0)}
    api = await make_api(rate_limit=100_000)
    await make_worker(**overrides)
    first = await new_video(sim)
    await register(api, first, slow_origin + "/slow", 200)
    await register(api, first, black_hole.url + "/hole", 200)
    at, late = await healthy_lateness(api, sim, rec, first, base)
    assert late <= 3.0, f"the healthy watches arrived {late:.2f} s after completed"
    assert black_hole.connections <= 16  # the cap: 16 in flight to it at once

    # the bad origins' first attempts time out / answer after 5-6 s; their retries follow
    await asyncio.sleep(max(0.0, at + 6.5 - time.time()))
    second = await new_video(sim)
    await register(api, second, slow_origin + "/slow", 50)
    await register(api, second, black_hole.url + "/hole", 50)
    _, late2 = await healthy_lateness(api, sim, rec, second, base)
    assert late2 <= 3.0, f"second video: the healthy watches arrived {late2:.2f} s late"
    assert rec.duplicates() == 0


async def test_many_dead_origins_do_not_hold_every_lane(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: tuple[Receiver, str],
) -> None:
    """24 origins that accept and never answer, two watches each -- 48 attempts for 16 lanes,
    none reaching its breaker's count -- and 20 healthy watches registered last, on one
    video: the healthy ones arrive within 3 s of ``completed``, not after the dead ones'
    8 s timeout; attempts in flight stay under twice the lanes. Fails before: the dead
    origins' first attempts held every lane for their whole timeout (a black-box run,
    2026-12-07: 100 dead origins held healthy watches 90 s with default settings)."""
    rec, base = receiver
    holes = [BlackHole() for _ in range(24)]
    for hole in holes:
        await hole.start()
    try:
        api = await make_api(rate_limit=100_000)
        worker = await make_worker(
            delivery_concurrency=16, delivery_timeout=8, lease=10, retry_schedule=(30.0,)
        )
        video = await new_video(sim)
        for hole in holes:
            await register(api, video, hole.url + "/hole", 2)
        _, late = await healthy_lateness(api, sim, rec, video, base, 12)
        assert late <= 3.0, f"the healthy watches arrived {late:.2f} s after completed"
        assert sum(h.requests for h in holes) <= 32  # (16 lanes, and 16 replaced at most)
        deliverer = worker.ctx["runtime"].deliverer
        assert 0 < deliverer.stalled <= 16
        assert rec.duplicates() == 0
    finally:
        for hole in holes:
            await hole.close()


async def test_the_breaker_opens_probes_and_closes(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, black_hole: BlackHole
) -> None:
    """60 watches to an origin that accepts and never answers: after 5 timeouts in a row its
    circuit opens; its due attempts are recorded ``circuit open`` without a connection, so it
    gets at most half of the recorded attempts; no watch fails before its schedule is
    through; once it answers again, a probe closes the circuit and every watch is delivered."""
    schedule = (0.5, *([1.0] * 12), 5.0, 5.0)
    api = await make_api(rate_limit=100_000)
    worker = await make_worker(
        delivery_timeout=1,
        lease=3,
        retry_schedule=schedule,
        breaker_failures=5,
        breaker_cooldown=2,
    )
    video = await new_video(sim)
    watches = await register(api, video, black_hole.url + "/hole", 60)
    await asyncio.sleep(0.3)
    await complete(sim, video)
    await asyncio.sleep(7)
    rows = {w["id"]: await attempts(api, w["id"]) for w in watches}
    recorded = sum(len(r) for r in rows.values())
    errors = [a["error"] for r in rows.values() for a in r]
    opened = errors.count("circuit open")
    assert opened > 0, errors[:20]
    assert black_hole.connections * 2 <= recorded, (black_hole.connections, recorded)
    refused = [a for r in rows.values() for a in r if a["error"] == "circuit open"]
    assert all(a["latencyMs"] == 0 and a["statusCode"] is None for a in refused)
    assert {e for e in errors if e != "circuit open"} <= {"timeout"}
    deliverer = worker.ctx["runtime"].deliverer
    assert deliverer.breakers.open_origins == 1
    # every recorded attempt follows the schedule: attempt n+1 no sooner than the n-th delay
    for r in rows.values():
        assert len(r) <= len(schedule) + 1
    assert "failed" not in await statuses(api, watches)

    black_hole.answering = True  # the origin is back: the next probe closes the circuit
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = await statuses(api, watches)
        if all(s == "delivered" for s in now):
            break
        await asyncio.sleep(0.2)
    assert all(s == "delivered" for s in now), now
    assert deliverer.breakers.open_origins == 0


async def test_a_recovery_is_sent_at_once_though_the_circuit_was_open(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, black_hole: BlackHole
) -> None:
    """Watches failed while their origin was down, its circuit open for a long cooldown; the
    origin comes back and the operator recovers them (and redelivers one) before the
    cooldown ends: the attempts asked for reach the origin, none is ``circuit open``."""
    api = await make_api(rate_limit=100_000)
    worker = await make_worker(
        delivery_timeout=0.5,
        lease=3,
        retry_schedule=(0.2,),
        breaker_failures=2,
        breaker_cooldown=600,
    )
    video = await new_video(sim)
    watches = await register(api, video, black_hole.url + "/hole", 6)
    await asyncio.sleep(0.3)
    await complete(sim, video)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and set(await statuses(api, watches)) != {"failed"}:
        await asyncio.sleep(0.2)
    assert set(await statuses(api, watches)) == {"failed"}
    deliverer = worker.ctx["runtime"].deliverer
    assert deliverer.breakers.open_origins == 1
    black_hole.answering = True
    before = {w["id"]: len(await attempts(api, w["id"])) for w in watches}
    redelivered, rest = watches[0], watches[1:]
    resp = await api.post(f"/v1/watches/{redelivered['id']}/redeliver", headers=auth())
    assert resp.status == 202, await resp.text()
    resp = await api.post(
        "/v1/watches/recover", json={"since": "2020-01-01T00:00:00Z"}, headers=auth()
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["count"] == len(rest)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(await statuses(api, watches)) != {"delivered"}:
        await asyncio.sleep(0.1)
    assert set(await statuses(api, watches)) == {"delivered"}
    for w in watches:  # every attempt since the operator's asking was sent, none refused
        since = (await attempts(api, w["id"]))[before[w["id"]] :]
        assert since and all(a["statusCode"] == 204 for a in since), since
    assert deliverer.breakers.open_origins == 0


async def test_a_slow_origins_backlog_never_starves_the_claimer(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: tuple[Receiver, str],
    slow_origin: str,
) -> None:
    """4 lanes claim 16 deliveries ahead at most; 80 watches to a 5 s origin (2 at a time)
    fill that many times over. Their claims are handed back to the schedule -- not attempts
    -- so the 10 healthy watches registered last are claimed and arrive within 3 s, and the
    slow ones' first attempts are made as their origin gets room, none recorded early."""
    rec, base = receiver
    api = await make_api(rate_limit=100_000)
    worker = await make_worker(
        delivery_concurrency=4, origin_concurrency=2, delivery_timeout=6, lease=8
    )
    video = await new_video(sim)
    slow = await register(api, video, slow_origin + "/slow", 80)
    healthy = await register(api, video, base + "/hook", 10)
    for w in healthy:
        rec.add_secret(w["secret"])
    await asyncio.sleep(0.3)
    at = await complete(sim, video)
    got = await wait_arrived(rec, healthy, 10)
    assert len(got) == 10
    assert max(got) - at <= 3.0, f"the healthy watches arrived {max(got) - at:.2f} s late"
    deliverer = worker.ctx["runtime"].deliverer
    assert (
        deliverer.claimer.jobs.inflight(("http", "127.0.0.1", int(slow_origin.rsplit(":", 1)[1])))
        <= 2
    )
    rows = [await attempts(api, w["id"]) for w in slow[:20]]
    assert sum(len(r) for r in rows) <= 4  # handed back claims are not attempts


async def test_an_origin_yet_to_answer_gives_its_claims_back_when_others_need_them(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: tuple[Receiver, str],
    black_hole: BlackHole,
) -> None:
    """A fresh worker's first fan-out goes to a black hole alone (60 watches, 2 at a time):
    it has never answered, so how long its attempts take is unknown and its queue is held
    -- until the claimer is crowded: then it is handed back, so the 5 healthy watches of a
    second video completed half a second later arrive within 3 s, not after the hole's
    6 s timeout."""
    rec, base = receiver
    api = await make_api(rate_limit=100_000)
    worker = await make_worker(
        delivery_concurrency=4, origin_concurrency=2, delivery_timeout=6, lease=8
    )
    first, second = await new_video(sim), await new_video(sim)
    await register(api, first, black_hole.url + "/hole", 60)
    healthy = await register(api, second, base + "/hook", 5)
    for w in healthy:
        rec.add_secret(w["secret"])
    await asyncio.sleep(0.3)
    await complete(sim, first)
    deliverer = worker.ctx["runtime"].deliverer
    await eventually(lambda: black_hole.requests >= 2, what="the hole's first attempts")
    await asyncio.sleep(0.5)
    at = await complete(sim, second)
    got = await wait_arrived(rec, healthy, 10)
    assert len(got) == 5
    assert max(got) - at <= 3.0, f"the healthy watches arrived {max(got) - at:.2f} s late"
    # the hole's two attempts still hang (6 s timeout): none other was started meanwhile,
    # and what it had claimed beyond them went back to the schedule, not to its queue
    hole = ("http", "127.0.0.1", int(black_hole.url.rsplit(":", 1)[1]))
    assert black_hole.requests == 2
    assert deliverer.claimer.jobs.inflight(hole) == 2
    assert sum(1 for job in deliverer.claimer.jobs if job.origin == hole) <= 2
