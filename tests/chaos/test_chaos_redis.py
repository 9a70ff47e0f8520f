"""Redis restarts: with ``config/redis.conf`` (AOF, ``appendfsync everysec``) a crash of Redis
loses no watch acknowledged more than 1 s before it; the API answers 503 problem+json while
Redis is away (and never hangs past its timeout); API and worker reconnect by themselves
and polling and deliveries resume."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from relay.store.connection import SOCKET_TIMEOUT
from tests.chaos.harness import AUTH, SECRET, Registered, Stack, report, wait_until

AOF_WINDOW = 2.0  # appendfsync everysec: what a crash may lose (2 s when fsync is slow)
PROBLEM = "application/problem+json"


def timeline(done_after: float) -> list[dict[str, object]]:
    """Analyzing, then completed after *done_after* seconds."""
    return [{"status": "analyzing", "after": 0}, {"status": "completed", "after": done_after}]


@dataclass
class Registrar:
    """Registers watches one after another (4 at a time) until stopped; keeps every answer."""

    stack: Stack
    videos: list[str]
    acked: list[Registered] = field(default_factory=list)
    refused: list[tuple[float, int, str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, lane: int) -> None:
        for vid in itertools.islice(itertools.cycle(self.videos), lane, None, 4):
            if self.stop.is_set():
                return
            body = {"videoId": vid, "callbackUrl": self.stack.receiver_url + "/a", "secret": SECRET}
            started = time.monotonic()
            try:
                async with self.stack.http.post(
                    f"{self.stack.api()}/v1/watches",
                    json=body,
                    headers=AUTH,
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as resp:
                    took = time.monotonic() - started
                    if resp.status == 201:
                        wid = (await resp.json())["id"]
                        self.acked.append(Registered(wid, vid, time.time(), "/a"))
                    else:
                        self.refused.append((time.time(), resp.status, resp.content_type, took))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors.append(repr(exc))
            await asyncio.sleep(0.02)  # a steady trickle, not a flood of 503s


async def probe(
    stack: Stack, method: str, path: str, json: dict[str, Any] | None = None
) -> tuple[int, str, float]:
    """One API request: (status, content type, seconds)."""
    started = time.monotonic()
    async with stack.http.request(
        method, stack.api() + path, json=json, headers=AUTH, timeout=aiohttp.ClientTimeout(30)
    ) as resp:
        await resp.read()
        return resp.status, resp.content_type, time.monotonic() - started


async def test_redis_crash_and_restart(stack: Stack) -> None:
    """SIGKILL Redis under a steady stream of registrations and deliveries, start it again on
    the same AOF 2 s later; nothing acknowledged >1 s before the crash is lost."""
    await stack.start_api()
    await stack.start_worker()
    api_pid, worker_pid = stack.procs["api"].pid, stack.procs["worker"].pid
    vids: list[str] = []
    for done_after in (0.5, 2.0, 3.5, 5.0, 6.5):  # before, during and after the outage
        vids += await stack.videos(20, timeline=timeline(done_after))
    reg = Registrar(stack, vids)
    lanes = [asyncio.create_task(reg.run(n)) for n in range(4)]
    await wait_until(
        lambda: stack.has_received([r.id for r in reg.acked], 20), 10, what="first deliveries"
    )

    killed_at = time.time()
    await asyncio.to_thread(stack.redis.kill)
    down = [
        await probe(stack, "GET", f"/v1/watches/{reg.acked[0].id}"),
        await probe(
            stack,
            "POST",
            "/v1/watches",
            json={"videoId": vids[0], "callbackUrl": stack.receiver_url + "/a"},
        ),
        await probe(stack, "GET", "/readyz"),
    ]
    await wait_until(lambda: len(reg.refused) >= 10, 10, what="503s")
    await asyncio.sleep(max(0.0, killed_at + 2.0 - time.time()))  # two seconds of outage
    restarted_at = time.time()
    await asyncio.to_thread(stack.redis.start)
    acked_before = len(reg.acked)
    api_back = await wait_until(lambda: len(reg.acked) > acked_before, 15, what="API reconnects")
    received_before = len(stack.receiver.events)
    delivering_again = await wait_until(
        lambda: len(stack.receiver.events) > received_before,
        15,
        what="deliveries resume",
    )
    await asyncio.sleep(1.0)  # keep registering a little on the restarted Redis
    reg.stop.set()
    await asyncio.gather(*lanes)

    # nothing acknowledged more than 1 s before the crash is lost
    ids = [r.id for r in reg.acked]
    st = await stack.statuses(ids)
    old = [r for r in reg.acked if r.acked_at < killed_at - AOF_WINDOW]
    lost_old = [r.id for r in old if st[r.id] is None]
    recent = [r for r in reg.acked if killed_at - AOF_WINDOW <= r.acked_at <= killed_at]
    lost_recent = [r.id for r in recent if st[r.id] is None]
    survivors = [r.id for r in reg.acked if st[r.id] is not None]
    done = await stack.wait_final(survivors, 30)
    # both processes rode it out
    api_alive = stack.procs["api"].alive() and stack.procs["api"].pid == api_pid
    worker_alive = stack.procs["worker"].alive() and stack.procs["worker"].pid == worker_pid
    await stack.quiesce()
    tally = stack.tally(survivors)
    report(
        "redis kill -9 + restart",
        due=len(survivors),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost + len(lost_old),
        recover_s=done - restarted_at,
        acked=len(reg.acked),
        lost_last_1s=f"{len(lost_recent)}/{len(recent)}",
        refused_503=len(reg.refused),
        api_back=api_back - restarted_at,
        deliveries_back=delivering_again - restarted_at,
    )
    assert not lost_old, f"{len(lost_old)} watches acknowledged >1 s before the crash are gone"
    assert tally.lost == 0, f"{tally.lost} surviving watches never delivered"
    assert not tally.multi_id_watches()
    # while Redis was away: 503 problem+json, at once, never a hang or a 500
    assert [(s, ct) for s, ct, _ in down[:2]] == [(503, PROBLEM)] * 2, down
    assert down[2][0] == 503, down
    assert all(took < 2 for _, _, took in down), down
    assert all(s == 503 and ct == PROBLEM for _, s, ct, _ in reg.refused), set(reg.refused)
    assert not reg.errors, reg.errors[:3]
    assert api_alive and worker_alive, "API or worker died with Redis"


class HangError(AssertionError):
    """The API took longer than its Redis timeout allows."""


async def test_redis_hung_api_answers_503_within_its_timeout(stack: Stack) -> None:
    """Redis frozen (SIGSTOP: connections open, no answers): 32 concurrent API requests
    answer 503 within the client's retry budget (3 tries of SOCKET_TIMEOUT); after SIGCONT
    the API and the worker carry on by themselves."""
    bound = 3 * SOCKET_TIMEOUT + 1.5
    await stack.start_api()
    await stack.start_worker()
    vids = await stack.videos(5, timeline=timeline(3.0))
    regs = await stack.register(vids)
    stack.redis.freeze()
    try:

        async def timed(
            method: str, path: str, json: dict[str, Any] | None = None
        ) -> tuple[int | str, str, float]:
            started = time.monotonic()
            try:
                async with stack.http.request(
                    method,
                    stack.api() + path,
                    json=json,
                    headers=AUTH,
                    timeout=aiohttp.ClientTimeout(total=bound + 1),
                ) as resp:
                    return resp.status, resp.content_type, time.monotonic() - started
            except TimeoutError:
                return "no answer", "", time.monotonic() - started

        body = {"videoId": vids[0], "callbackUrl": stack.receiver_url + "/a", "secret": SECRET}
        # more requests at once than the API has idle Redis connections: it must open more
        answers = await asyncio.gather(
            *(timed("GET", f"/v1/watches/{regs[n % len(regs)].id}") for n in range(30)),
            timed("POST", "/v1/watches", json=body),
            timed("GET", "/readyz"),
        )
    finally:
        stack.redis.thaw()
    # after SIGCONT everything carries on
    await wait_until(
        lambda: readyz_ok(stack), 20, interval=0.2, what="/readyz 200 after Redis came back"
    )
    await stack.wait_final([r.id for r in regs], 20)
    await stack.quiesce()
    tally = stack.tally(r.id for r in regs)
    report(
        "redis hung (SIGSTOP)",
        due=len(regs),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=None,
        answered_503=sum(1 for s, _, t in answers if s == 503 and t <= bound),
        hung=sum(1 for s, _, t in answers if s != 503 or t > bound),
        slowest=f"{max(t for _, _, t in answers):.1f}s",
        bound_s=bound,
    )
    assert tally.lost == 0
    late = [a for a in answers if a[0] != 503 or a[2] > bound]
    if late:
        raise HangError(f"answers while Redis hung (bound {bound:.1f} s): {answers}")


async def readyz_ok(stack: Stack) -> bool:
    """Whether the API's /readyz answers 200."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with stack.http.get(
            f"{stack.api()}/readyz", timeout=aiohttp.ClientTimeout(total=2)
        ) as resp:
            return resp.status == 200
    return False
