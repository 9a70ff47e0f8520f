"""What travels between a fan-out, the deliverer and its records: events, claims, outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from relay.domain.watch import Watch


@dataclass(slots=True)
class NewEvent:
    """A final event for one watch, ready to be scheduled (one per watch of a fan-out)."""

    watch_id: str
    event_id: str
    event_type: str
    body: bytes
    video_status: str = ""
    clips_ms: int | None = None


class EventMaker(Protocol):
    """Makes the event of a watch (e.g. its ``watch.expired``, with the time it is made)."""

    def __call__(self, watch: Watch, /) -> NewEvent: ...


# not frozen: a frozen dataclass's __init__ costs ~0.4 us more than this one, once per
# delivery on the deliverer's tuned hot path; nothing changes a claim once it is made
@dataclass(slots=True)
class DeliveryClaim:
    """A claimed delivery, as a claim script returns it."""

    watch_id: str
    watch: Watch | None  # None: the watch is gone
    body: bytes | None  # its current event's body; None: no event
    deadline_ms: int  # the claim's lease deadline, its token (``store.deliveries.extend``)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt, to be recorded."""

    watch_id: str
    event_id: str
    outcome: str  # ok | retry | failed | disabled
    record: dict[str, Any]
    attempt: int
    next_due_ms: int = 0
    last_error: str = ""
