"""The order of a fan-out: which waiting watches get their events first.

A video's waiting watches come round robin over (tenant, callback origin) groups
(:func:`relay.store.codec.fan_out_order`), so a receiver with 20 watches is among the first
events made beside another's 10,000. As the fan-out goes, the deliverer paces the events of
an origin that would not start them soon (:meth:`workers.delivery.origins.OriginQueues.plan`);
from then on that origin's remaining watches wait until every other origin's have their
events: the chunks made first are the ones that are sent at once.

An origin the deliverer knows nothing about yet (it has not answered once) is neither fast
nor slow: it gets a wave or two of events (:meth:`~workers.delivery.origins.OriginQueues.
unanswered_room`), and its further watches wait, in their order, while other origins' go
-- until it answers (then they come first) or nothing else is left.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from relay.store.codec import fan_out_order

Waiting = tuple[str, str]  # watch id, its callback's origin tag
Room = Callable[[str], int | None]
"""How many events an origin (by tag) may get now: None any number, -1 none (it is slow: its
watches go last)."""

SCAN_AHEAD = 4  # a take looks this many times its size past watches that must wait, at most


class Pages:
    """The pages of a fan-out's watches (id -> waiting entry) as its background read brings
    them in, so the fan-out can go on with them before the read ends."""

    __slots__ = ("_arrived", "_got")

    def __init__(self) -> None:
        self._got: list[Mapping[str, str]] = []
        self._arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, page: Mapping[str, str]) -> None:
        """A page read (the reader's callback)."""
        self._got.append(page)
        if not self._arrived.done():
            self._arrived.set_result(None)

    @property
    def ready(self) -> bool:
        """A page came in since the last :meth:`take`."""
        return bool(self._got)

    def arrival(self) -> asyncio.Future[None]:
        """Done once a page is ready."""
        return self._arrived

    def take(self) -> dict[str, str]:
        """The entries of the pages that came in since the last take."""
        got, self._got = self._got, []
        self._arrived = asyncio.get_running_loop().create_future()
        entries: dict[str, str] = {}
        for page in got:
            entries.update(page)
        return entries


class FanOutOrder:
    """The watches of one fan-out, handed out a chunk at a time.

    A large fan-out starts before all of its watches are read: *items* can be the first
    page of them in fan-out order, and *rest* the task reading every page (then ordering
    them all); :meth:`fill` takes that order in once it is there. Until then the first
    page's round robin is the order; when it is used up, the pages read since (*pages*, fed
    by the read) come next, those that came in together round robin among themselves, and
    only when none came in does the fan-out wait for the read."""

    __slots__ = (
        "_held",
        "_held_next",
        "_items",
        "_next",
        "_pages",
        "_rest",
        "_seen",
        "_seq",
        "_single",
        "_slow",
        "_tags",
        "_waiting",
        "total",
    )

    def __init__(
        self,
        items: Sequence[Waiting],
        rest: asyncio.Task[list[Waiting]] | None = None,
        pages: Pages | None = None,
    ) -> None:
        self._items = items
        self._next = 0
        self._slow: set[str] = set()
        self._held: list[Waiting] = []  # watches of slow origins, in their order
        self._held_next = 0
        # watches of origins yet to answer, by tag, each with its place in the fan-out
        self._waiting: dict[str, deque[tuple[int, Waiting]]] = {}
        self._seq = 0
        # (one origin: nothing to go before it, it never waits)
        self._tags = {tag for _, tag in items}
        self._single = len(self._tags) < 2
        self._rest = rest
        self._pages = pages if rest is not None else None
        self._seen = {w for w, _ in items} if self._pages is not None else set()
        self.total = len(items)  # watches of the fan-out (known so far)

    def __len__(self) -> int:
        return self.total

    @property
    def done(self) -> bool:
        """Every watch was handed out."""
        return (
            self._rest is None
            and self._next >= len(self._items)
            and self._held_next >= len(self._held)
            and not self._waiting
        )

    @property
    def reading(self) -> bool:
        """The rest of the watches are still being read."""
        return self._rest is not None

    async def fill(self, wait: bool = False) -> bool:
        """Take in the whole order once it is read: the watches not handed out yet, in that
        order. Before that, once the watches taken in are used up, the pages read since,
        if any came in. When none came in, the fan-out waits for the next page or the whole
        order if none of its watches waits for its origin (those may go first: a wait for
        an origin to answer is short), or when told to. True when it took in watches just
        now."""
        rest, pages = self._rest, self._pages
        if rest is None:
            return False
        used_up = self._next >= len(self._items)
        # (pages come in also while watches wait for their origin)
        if (
            pages is not None
            and pages.ready
            and used_up
            and not rest.done()
            and self._merge(pages.take())
        ):
            return True
        if not (rest.done() or wait or (used_up and not self._waiting)):
            return False
        while pages is not None and not rest.done():
            if pages.ready and self._merge(pages.take()):
                return True
            await asyncio.wait((rest, pages.arrival()), return_when=asyncio.FIRST_COMPLETED)
        full = await rest  # (a failed read raises here and stays: the order is not done)
        self._rest = self._pages = None
        if self._seen:  # handed out: every watch taken in so far less those still to come
            tail = {w for w, _ in self._items[self._next :]}
            handed = self._seen - tail
            self._seen = set()
        else:
            handed = {w for w, _ in self._items[: self._next]}
        self._items = [item for item in full if item[0] not in handed]
        self._next = 0
        self._single = len({tag for _, tag in full}) < 2
        self.total = len(full)
        return True

    def _merge(self, entries: Mapping[str, str]) -> bool:
        """Pages read before the whole order: their watches not seen yet go after those
        still to come, round robin among themselves. True when there were any."""
        seen = self._seen
        new = fan_out_order({w: e for w, e in entries.items() if w not in seen})
        if not new:
            return False
        self._seen.update(w for w, _ in new)
        self._tags.update(tag for _, tag in new)
        self._single = len(self._tags) < 2
        self._items = [*self._items[self._next :], *new]
        self._next = 0
        self.total += len(new)
        return True

    def close(self) -> None:
        """Stop reading (the fan-out stopped early)."""
        rest, self._rest, self._pages = self._rest, None, None
        if rest is None:
            return
        if rest.done():
            if not rest.cancelled():
                rest.exception()  # (retrieved: the fan-out's own error is the one reported)
        else:
            rest.cancel()

    def take(self, n: int, room: Room | None = None, ahead: bool = True) -> list[Waiting]:
        """The next *n* watches (fewer at the end): those of origins not known to be slow
        first. With *room*, an origin gets at most what it says; its other watches wait (and
        come first once it has room, in their fan-out order among themselves), and fewer
        than *n* may come although more are left -- none when every origin in reach must
        wait: a take without *room* then gives them as they are. Not *ahead*: only watches
        that wait already may come (a take again while waiting for an answer sweeps no
        further into the order)."""
        out: list[Waiting] = []
        slow, held, waiting = self._slow, self._held, self._waiting
        left: dict[str, int] = {}

        def fits(tag: str) -> bool:
            if room is None or self._single:
                return True
            k = left.get(tag)
            if k is None:
                r = room(tag)
                if r is not None and r < 0:  # slow: it goes last
                    slow.add(tag)
                    return False
                k = n if r is None else r
            left[tag] = k - 1
            return k > 0

        if waiting:  # watches that waited first (they came earlier), merged in their order
            heads = [(queue[0][0], tag) for tag, queue in waiting.items()]
            heapq.heapify(heads)
            while heads and len(out) < n:
                _, tag = heapq.heappop(heads)
                queue = waiting[tag]
                if tag not in slow and fits(tag):
                    out.append(queue.popleft()[1])
                    if queue:
                        heapq.heappush(heads, (queue[0][0], tag))
                    else:
                        del waiting[tag]
                elif tag in slow:
                    held.extend(item for _, item in queue)
                    del waiting[tag]
        items, skipped, reach = self._items, 0, SCAN_AHEAD * n if ahead else 0
        # (locals, not attributes: a noisy fan-out scans thousands of watches of slow origins)
        i, end, want = self._next, len(items), n - len(out)
        while want > 0 and i < end and skipped < reach:
            item = items[i]
            i += 1
            tag = item[1]
            if tag in slow:
                held.append(item)
            elif tag not in waiting and fits(tag):
                out.append(item)
                want -= 1
            elif tag in slow:  # (found slow just now)
                held.append(item)
            else:
                self._seq += 1
                waiting.setdefault(tag, deque()).append((self._seq, item))
                skipped += 1
        self._next = i
        if self._next >= len(items) and not waiting and self._rest is None:
            while len(out) < n and self._held_next < len(held):
                out.append(held[self._held_next])
                self._held_next += 1
        return out

    def slow(self, tags: Iterable[str]) -> None:
        """These origins' events are being paced: their other watches go last."""
        self._slow.update(tags)
