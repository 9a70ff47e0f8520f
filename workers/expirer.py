"""The expirer: gives a watch whose video never finished its ``watch.expired``.

A video that is ``completed`` and waits for its clips to render has finished: its watches'
expiries wait until RELAY_RENDER_TIMEOUT after ``completed`` (and a lease), by when the
poller has given them ``clips.ready``.

A watch is a member of the expiry schedule (watch id -> RELAY_WATCH_TIMEOUT after it was
registered) while it waits on its video; its event or its cancellation takes it off. Due
members are claimed with a lease like any pump's, so a worker that dies mid-way loses
nothing: the member is due again after the lease. An expiry that meets a Redis error (Redis
loading, read-only after a failover, timing out) stops its batch, and the batch's claims
not done are handed back due RETRY_S later (by Redis' clock) -- or, if Redis cannot take
even that, come back after their lease. Expiring is idempotent (``finalize`` gives a watch
its event only while it waits on its video), so a try that did run is harmless to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay import constants as c
from relay import logs
from relay.domain.clock import now_ms
from relay.store import Store
from workers.pump import Pump

log = logs.get("workers.expirer")
RETRY_S = 1.0  # an expiry that met a Redis error is tried again this much later

Claimed = tuple[str, int]  # a watch id, and its claim's token


class Expirer(Pump[Claimed]):
    """Claims due expiries and gives those watches their ``watch.expired``."""

    schedule = c.EXPIRY_SCHEDULE_KEY
    name = "expirer"

    def __init__(self, store: Store, *, lease_s: float, render_s: float = 1800.0) -> None:
        super().__init__(store, concurrency=64, lease_s=lease_s, batch=64, idle_s=0.5)
        self.render_ms = int(render_s * 1000)  # RELAY_RENDER_TIMEOUT
        self.retried = 0  # expiries handed back after a Redis error (for tests)

    async def claim(self, limit: int) -> Sequence[Claimed]:
        ids, token = await self.store.deliveries.claim_expiry_batch(
            limit=limit, lease_s=self.lease_s
        )
        return [(wid, token) for wid in ids]

    async def work(self, items: Sequence[Claimed], release: Callable[[], None]) -> None:
        """Expire each watch (its event takes it off the schedule); a watch that has its
        event already, or is gone, just leaves the schedule."""
        done: list[str] = []
        for n, (watch_id, token) in enumerate(items):
            try:
                got = await self.store.deliveries.expire(
                    watch_id, now_ms(), render_ms=self.render_ms
                )
                if got > 0:
                    log.info("watch expired", watch_id=watch_id)
                elif got < 0:  # its video is completed, its clips render: due after that
                    await self.store.deliveries.extend_schedule(
                        c.EXPIRY_SCHEDULE_KEY, [watch_id], token, -got / 1000 + self.lease_s
                    )
                else:
                    done.append(watch_id)
            except Exception as exc:  # Redis in trouble: the rest of the batch goes back
                await self._retry(items[n:], exc)
                break
            finally:
                release()
        if done:
            await self.store.deliveries.unschedule_expiries(done)

    async def _retry(self, items: Sequence[Claimed], exc: Exception) -> None:
        log.warning(
            "expiry failed: tried again later",
            watches=len(items),
            retry_s=RETRY_S,
            error=f"{type(exc).__name__}: {exc}",
        )
        by_token: dict[int, list[str]] = {}
        for wid, token in items:
            by_token.setdefault(token, []).append(wid)
        try:
            for token, ids in by_token.items():
                ours, _ = await self.store.deliveries.extend_schedule(
                    c.EXPIRY_SCHEDULE_KEY, ids, token, RETRY_S
                )
                self.retried += len(ours)
        except Exception as again:  # the claims come back after their lease
            log.warning("expiry hand-back failed", error=f"{type(again).__name__}: {again}")
