"""Recording the outcomes of attempts: a flusher writes them in batches (one script call
each) and logs one line per attempt, so no attempt waits on Redis to be recorded."""

from __future__ import annotations

import asyncio

from relay import logs
from relay.domain.delivery import AttemptResult
from relay.store import SETTLE_BATCH, Store
from relay.tasks import finish
from workers.delivery.logger import LOG_NAME, log

FLUSH_BATCH = 256  # outcomes pending that trigger a flush at once
FLUSH_EVERY_S = 0.005  # an outcome waits this long for others to be recorded with it
STOP_WAIT_S = 5.0  # how long a stop lets a flush in progress end before it cancels it


class Settler:
    """Holds outcomes until the flusher records them (``store.deliveries.settle``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._results: list[AttemptResult] = []
        self._lines: list[dict[str, object]] = []  # a log line per attempt, written per flush
        self._flush_now = asyncio.Event()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._winding_down = False

    @property
    def pending(self) -> int:
        """Outcomes not recorded yet."""
        return len(self._results)

    def add(self, result: AttemptResult, line: dict[str, object]) -> None:
        """Record *result* soon, and log *line* with it: the flusher records what is
        pending at once for a full batch, else within FLUSH_EVERY_S (a timer, armed only
        while something waits)."""
        self._results.append(result)
        self._lines.append(line)
        if len(self._results) >= FLUSH_BATCH:
            self._flush_now.set()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(
                FLUSH_EVERY_S, self._flush_now.set
            )

    def start(self) -> None:
        """Start the flusher."""
        self._flusher = asyncio.create_task(self._flush_loop(), name="deliverer-flush")

    async def stop(self) -> None:
        """End the flusher and record everything still pending. (A stopping deliverer
        calls this only after its last attempt: until then the flusher records outcomes as
        they arrive, well within their claims' leases -- a lane renews a claim before an
        attempt so that it outlasts the attempt by a second or more.)"""
        self._winding_down = True
        if self._flusher is not None:
            self._flush_now.set()
            await finish(self._flusher, STOP_WAIT_S)
        await self.flush()  # (a flush cut short by the stop put its batch back first)

    async def _flush_loop(self) -> None:
        while not self._winding_down:
            await self._flush_now.wait()
            self._flush_now.clear()
            try:
                await self.flush()
            except Exception:  # (a bug; the flusher must outlive it, or no attempt is recorded)
                log.exception("recording attempts failed")
                await asyncio.sleep(0.5)
                self._flush_now.set()

    async def flush(self) -> None:
        """Record the attempts made since the last flush (a script call per SETTLE_BATCH),
        after logging one line for each."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            logs.lines(LOG_NAME, "delivery attempt", lines)
        if not self._results:
            return
        batch, self._results = self._results, []
        for start in range(0, len(batch), SETTLE_BATCH):
            try:
                await self.store.deliveries.settle(batch[start : start + SETTLE_BATCH])
            except asyncio.CancelledError:
                # a stop cut the call short (Redis slow): what it did not record goes back,
                # for the stop's last flush -- dropped, those attempts were made but never
                # recorded, and sent again after their leases (a review); a call that did
                # land is not recorded twice (settle.lua: safe to run twice)
                self._results = batch[start:] + self._results
                raise
            except Exception as exc:
                # Redis away: keep what is not recorded yet and try again (the claims'
                # leases are long); what was recorded is not recorded twice
                left = batch[start:]
                log.warning(
                    "recording attempts failed", error=type(exc).__name__, pending=len(left)
                )
                self._results = left + self._results
                await asyncio.sleep(0.5)
                self._flush_now.set()
                return
