"""What travels between a fan-out, the deliverer and its records: events, claims, outcomes."""

from __future__ import annotations

from dataclasses import dataclass

from relay.domain.watch import Watch


@dataclass(slots=True)
class FinalEvent:
    """A video's final outcome, as every waiting watch's event gets it: one type, one time.

    Nothing per watch is kept: each watch's body is built from its registration and this
    (:func:`relay.domain.events.body`), the same bytes whenever it is built. For
    ``clips.ready`` the video's deliverable clips are one shared document
    (:meth:`relay.domain.clips.ClipSet.doc`), stored once per video.
    """

    event_type: str
    at_ms: int  # the event's timestamp
    video_status: str = ""  # '' : the video's last seen status (watch.expired)
    video_progress: float | None = None
    video_error: str = ""  # video.failed: why
    clips_doc: bytes = b""  # clips.ready: the deliverable clips (JSON)
    clips_ms: int | None = None  # clips.ready: when they were fetched


# not frozen: a frozen dataclass's __init__ costs ~0.4 us more than this one, once per
# delivery on the deliverer's tuned hot path; nothing changes a claim once it is made
@dataclass(slots=True)
class DeliveryClaim:
    """A claimed delivery, as a claim script (or a fan-out that claims) returns it."""

    watch_id: str
    watch: Watch | None  # None: the watch is gone
    deadline_ms: int  # the claim's lease deadline, its token (``store.deliveries.extend``)
    first: bool = False  # made with its event (a fan-out's): no owner had it before


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt, to be recorded."""

    watch_id: str
    tenant: str
    event_type: str  # the event attempted (a watch has one final event of one type)
    claim_ms: int  # the claim it was made under (its lease deadline, the claim's token)
    outcome: str  # ok | retry | failed | disabled
    record_no: int  # the record's number among the watch's attempt records
    record: bytes  # the attempt record (:func:`relay.domain.attempts.record`)
    attempt: int
    next_due_ms: int = 0
    last_error: str = ""
    delivered_ms: int | None = None  # when the event was last delivered, if it was
    last_type: str = ""  # the event type of the watch's last final status, if any
    first: bool = False  # made under its event's first claim (:class:`DeliveryClaim`)

    @property
    def status(self) -> str:
        """The watch's status after this attempt."""
        if self.outcome == "retry":
            return "delivering"
        return "delivered" if self.outcome == "ok" else self.outcome
