"""The claim gate: right before an attempt starts, its claim must still hold -- the watch is
still on the delivery schedule with the claim's token as its score. A ``DELETE`` takes the
watch off the schedule (``cancel.lua``), another worker's claim changes the score: either
way the attempt is not made.

The lanes about to send are coalesced: every check asked for while none is in flight goes
to Redis in one ``ZMSCORE``, and those asked for meanwhile go in the next one, so the cost
is one round trip per batch of attempts starting together, not one per attempt.
"""

from __future__ import annotations

import asyncio

from relay.store import Store
from workers.delivery.logger import log

Check = tuple[str, int, "asyncio.Future[bool]"]  # watch id, claim token, its answer


class ClaimGate:
    """``await gate.holds(watch_id, token)`` right before an attempt."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[Check] = []
        self._task: asyncio.Task[None] | None = None
        self.round_trips = 0  # ZMSCOREs sent (for the cost per attempt)
        self.checked = 0  # claims checked
        self.dropped = 0  # attempts not made: the claim was gone

    def ask(self, watch_id: str, token: int) -> asyncio.Future[bool]:
        """Whether the claim on *watch_id* whose token is *token* still holds, soon (the
        caller can build the body meanwhile); False also when Redis could not tell (the
        claim stays leased: it comes back after the lease)."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((watch_id, token, answer))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="deliverer-gate")
        return answer

    async def holds(self, watch_id: str, token: int) -> bool:
        """:meth:`ask`, awaited."""
        return await self.ask(watch_id, token)

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # lanes woken in the same loop turn join this batch
            while self._pending:
                batch, self._pending = self._pending, []
                await self._check(batch)
        finally:
            self._task = None
            for _, _, answer in self._pending:  # (cancelled while checking)
                if not answer.done():
                    answer.set_result(False)

    async def _check(self, batch: list[Check]) -> None:
        self.round_trips += 1
        self.checked += len(batch)
        try:
            scores = await self.store.deliveries.claim_scores([wid for wid, _, _ in batch])
        except Exception as exc:
            log.warning("checking claims failed", error=type(exc).__name__, pending=len(batch))
            scores = [None] * len(batch)
        for (_, token, answer), score in zip(batch, scores, strict=True):
            ok = score is not None and int(score) == token
            self.dropped += not ok
            if not answer.done():
                answer.set_result(ok)
