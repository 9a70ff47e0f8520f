"""The order of a fan-out: which waiting watches get their events first.

A video's waiting watches come round robin over (tenant, callback origin) groups
(:func:`relay.store.codec.fan_out_order`), so a receiver with 20 watches is among the first
events made beside another's 10,000. As the fan-out goes, the deliverer paces the events of
an origin that would not start them soon (:meth:`workers.delivery.origins.OriginQueues.plan`);
from then on that origin's remaining watches wait until every other origin's have their
events: the chunks made first are the ones that are sent at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Waiting = tuple[str, str]  # watch id, its callback's origin tag


class FanOutOrder:
    """The watches of one fan-out, handed out a chunk at a time."""

    __slots__ = ("_held", "_held_next", "_items", "_next", "_slow")

    def __init__(self, items: Sequence[Waiting]) -> None:
        self._items = items
        self._next = 0
        self._slow: set[str] = set()
        self._held: list[Waiting] = []  # watches of slow origins, in their order
        self._held_next = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def done(self) -> bool:
        """Every watch was handed out."""
        return self._next >= len(self._items) and self._held_next >= len(self._held)

    def take(self, n: int) -> list[Waiting]:
        """The next *n* watches (fewer at the end): those of origins not known to be slow
        first."""
        out: list[Waiting] = []
        items, slow, held = self._items, self._slow, self._held
        while len(out) < n and self._next < len(items):
            item = items[self._next]
            self._next += 1
            if item[1] in slow:
                held.append(item)
            else:
                out.append(item)
        while len(out) < n and self._held_next < len(held):
            out.append(held[self._held_next])
            self._held_next += 1
        return out

    def slow(self, tags: Iterable[str]) -> None:
        """These origins' events are being paced: their other watches go last."""
        self._slow.update(tags)
