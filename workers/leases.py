"""The poller's claims of videos, kept alive while their work is.

A claim is a lease: the video's score in the poll schedule pushed to a deadline by Redis'
clock, which is also the claim's token. :class:`Leases` extends every claim a poller holds
in one script call per group (claims made together share a token) every lease/3, so a claim
outlives a wait for the upstream budget or a long fan-out; a claim found taken over is
marked lost, and its work stops at its next step. :meth:`Leases.write` makes a write of the
claim's owner under its token and, when that write crossed an extension (the token changed
while it was in flight, so the script wrote nothing), makes it again with the new one. An
extension whose reply has not been read yet may already have moved the token in Redis (its
script ran before the write's, on another connection of the pool, whose reply was read
first): a write refused while one is in flight waits for its reply before it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from relay import logs
from relay.store.connection import clear_resent, resent
from relay.store.scripts import SCRIPT_BATCH
from relay.store.videos import Videos
from relay.tasks import finish

log = logs.get("workers.leases")
T = TypeVar("T")


class LeaseLost(Exception):
    """The claim lapsed and another poller has the video now."""


@dataclass(slots=True, eq=False)
class Lease:
    """One claim of a video: its token (the lease deadline, ms of Redis' clock)."""

    video_id: str
    token: int
    lost: bool = False

    def check(self) -> None:
        """Raise :class:`LeaseLost` once the claim is known to be lost."""
        if self.lost:
            raise LeaseLost(self.video_id)


class Leases:
    """The claims a poller holds, extended while their work is alive."""

    def __init__(self, videos: Videos, lease_s: float) -> None:
        self.videos = videos
        self.lease_s = lease_s
        self.every_s = lease_s / 3
        self.held: dict[str, Lease] = {}
        self.extended = 0  # claims extended (for tests)
        self._extending = 0  # extensions in flight
        self._quiet = asyncio.Event()  # set while none is
        self._quiet.set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="poll-leases")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await finish(self._task, 1.0)

    def hold(self, video_id: str, token: int) -> Lease:
        """A claim just made: keep it alive until :meth:`drop`."""
        lease = Lease(video_id, token)
        self.held[video_id] = lease
        return lease

    async def release(self, lease: Lease) -> int:
        """Stop polling the video while the claim holds (``store.videos.release``: 0
        released, 1 polled again -- a watch came meanwhile -- or -1, the claim lost)."""
        vid = lease.video_id
        return await self.write(
            lease, lambda token: self.videos.release(vid, token), lambda got: got < 0
        )

    def drop(self, lease: Lease) -> None:
        """The claim's work is over (written, released or lost)."""
        if self.held.get(lease.video_id) is lease:
            del self.held[lease.video_id]

    async def write(
        self, lease: Lease, call: Callable[[int], Awaitable[T]], lost: Callable[[T], bool]
    ) -> T:
        """``call(token)``: a write made only while the claim holds (the script checks the
        token). Made again if the claim was extended meanwhile; marks the lease lost when
        the claim is someone else's."""
        while True:
            token = lease.token
            got = await call(token)
            if not lost(got):
                return got
            if lease.token == token and not lease.lost:
                await self.settled()
            if lease.token == token or lease.lost:
                lease.lost = True
                return got

    async def settled(self) -> None:
        """Return once no extension is in flight: a write refused for a token that has not
        changed may have crossed one whose script ran first and whose reply is unread."""
        await self._quiet.wait()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.every_s)
            if self._stop.is_set():
                return
            try:
                await self.extend()
            except Exception as exc:  # Redis away: try again next round
                log.warning("extending poll claims failed", error=f"{type(exc).__name__}: {exc}")

    async def extend(self) -> None:
        """Extend every claim held, a script call per token and chunk."""
        self._extending += 1
        self._quiet.clear()
        try:
            await self._extend()
        finally:
            self._extending -= 1
            if not self._extending:
                self._quiet.set()

    async def _extend(self) -> None:
        groups: dict[int, list[Lease]] = defaultdict(list)
        for lease in self.held.values():
            if not lease.lost:
                groups[lease.token].append(lease)
        for token, leases in groups.items():
            for start in range(0, len(leases), SCRIPT_BATCH):
                chunk = leases[start : start + SCRIPT_BATCH]
                clear_resent()
                try:
                    ours, new = await self.videos.extend(
                        [le.video_id for le in chunk], token, self.lease_s
                    )
                except Exception:
                    await self._reconcile(token, chunk)
                    raise
                missing: list[Lease] = []
                for le in chunk:
                    if le.token != token:
                        continue
                    if le.video_id in ours:
                        le.token = new
                        self.extended += 1
                    else:
                        missing.append(le)
                # sent again after a dropped connection: a first run may have extended them
                # (the second then finds no score at the old token), the scores tell
                if missing and resent():
                    await self._reconcile(token, missing)
                else:
                    for le in missing:
                        le.lost = True

    async def _reconcile(self, token: int, chunk: list[Lease]) -> None:
        """After an extension that failed without a reply (a timeout: it may have run in
        Redis), or was sent again after its connection dropped (its first run's reply
        lost, the second finding the claims extended already), each claim's score tells.
        Still the token: not extended (the next round does it). Another score, read while
        Redis' clock is still before the token: nobody else can have claimed the video (a
        claim takes only a lapsed score), so it is this extension's deadline, the new token.
        Otherwise (off the schedule, or read too late to tell) the claim counts as lost.
        Without this, one lost reply lost every claim of the call: their next writes were
        refused under the old token (review, 2026-12-06)."""
        scores, now = await self.videos.claim_scores([le.video_id for le in chunk])
        for le, score in zip(chunk, scores, strict=True):
            if le.token != token or (score is not None and int(score) == token):
                continue
            if score is not None and now < token:
                le.token = int(score)
                self.extended += 1
            else:
                le.lost = True
