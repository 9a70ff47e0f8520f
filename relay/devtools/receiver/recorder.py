"""What the receiver keeps: accepted secrets, verified deliveries, scripted answers, waiters.

Verification of one request is a few HMACs over keys decoded once, and deliveries are stored
compactly and parsed only when read, so the receiver keeps up with a benchmark's fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.domain.signing import (
    HEADER_ID,
    HEADER_TIMESTAMP,
    WebhookVerificationError,
    secret_bytes,
    verify_keys,
)


@dataclass(slots=True)
class ReceivedEvent:
    """One verified delivery, as the receiver saw it."""

    webhook_id: str
    timestamp: int
    path: str
    event: dict[str, Any]
    received_at: float
    attempt_headers: dict[str, str]
    status: int = 0  # the status code the receiver answered with

    def to_json(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict (camelCase keys, as in the relay's API)."""
        return {
            "webhookId": self.webhook_id,
            "timestamp": self.timestamp,
            "path": self.path,
            "event": self.event,
            "receivedAt": self.received_at,
            "attemptHeaders": self.attempt_headers,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    delay: float = 0.0
    retry_after: float | None = None


RawHeaders = tuple[tuple[bytes, bytes], ...]


# One recorded delivery, kept compact: a tuple of immutable scalars (and tuples of them) is
# untracked by the cyclic garbage collector after its first pass, so thousands of stored
# deliveries add nothing to the collector's work while a benchmark is running.
# (webhook_id, timestamp, path, body, received_at, raw_headers, status)
_Record = tuple[str, int, str, bytes, float, RawHeaders, int]


def _decode_headers(raw: RawHeaders) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in raw}


def _materialize(record: _Record, event: dict[str, Any] | None = None) -> ReceivedEvent:
    webhook_id, timestamp, path, body, received_at, raw_headers, status = record
    return ReceivedEvent(
        webhook_id=webhook_id,
        timestamp=timestamp,
        path=path,
        event=orjson.loads(body) if event is None else event,
        received_at=received_at,
        attempt_headers=_decode_headers(raw_headers),
        status=status,
    )


@dataclass(slots=True)
class _Waiter:
    count: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Receiver:
    """The receiver's state: secrets, recorded events, scripted answers and waiters.

    :func:`create_app` builds the aiohttp application around one instance; tests drive the
    same instance directly (``script``, ``wait_for``, ``events``).

    Deliveries are stored compactly (raw body and headers) and turned into
    :class:`ReceivedEvent` objects only when :attr:`events` is read (or at once when a printer
    is set), which keeps the sink cheap under a benchmark's load.
    """

    def __init__(
        self,
        secrets: Sequence[str] = (),
        *,
        printer: Callable[[ReceivedEvent], None] | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        verify_signatures: bool = True,
        default_status: int = 204,
    ) -> None:
        """Accept deliveries signed with any of ``secrets`` (``whsec_...``; a malformed one
        raises :class:`ValueError`). ``printer`` is called with each recorded event,
        ``on_reject`` with the path and the reason of each delivery refused (400);
        ``verify_signatures=False`` records unsigned or badly signed deliveries too;
        ``default_status`` answers POSTs whose path has no script left."""
        _check_status(default_status)
        self.printer = printer
        self.on_reject = on_reject
        self.rejected = 0  # deliveries refused: not verified, or not a JSON object
        self.verify_signatures = verify_signatures
        self.default_status = default_status
        self._keys: list[bytes] = []
        self._ids: set[str] = set()
        self._records: list[_Record] = []
        self._events: list[ReceivedEvent] = []  # self._records[: len(self._events)], parsed
        self._scripts: dict[str, deque[_Answer]] = {}
        self._waiters: list[_Waiter] = []
        self._anonymous = 0
        for secret in secrets:
            self.add_secret(secret)

    def reject(self, path: str, reason: str) -> None:
        """A delivery to *path* was refused for *reason* (not recorded)."""
        self.rejected += 1
        if self.on_reject is not None:
            self.on_reject(path, reason)

    # --- configuration --------------------------------------------------------------------

    @property
    def has_secrets(self) -> bool:
        """Whether at least one secret is configured."""
        return bool(self._keys)

    def add_secret(self, secret: str) -> None:
        """Also accept deliveries signed with ``secret``; :class:`ValueError` if malformed."""
        key = secret_bytes(secret)
        if key not in self._keys:
            self._keys.append(key)

    def script(
        self,
        path: str,
        codes: Sequence[int],
        *,
        delay: float = 0.0,
        retry_after: float | None = None,
    ) -> None:
        """Set the next answers for POSTs on ``path`` (e.g. ``[500, 500, 200]``), replacing any
        script left for it; once they are used up, ``default_status`` answers again.

        Each scripted answer waits ``delay`` seconds first (after recording the delivery) and,
        when ``retry_after`` is given, carries a ``Retry-After`` header with it (whole seconds
        are written as an integer, fractions as a decimal, for fast test schedules).
        """
        if not path.startswith("/"):
            raise ValueError("script path must start with '/'")
        for code in codes:
            _check_status(code)
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError("delay must be a finite number >= 0")
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError("retry_after must be a finite number >= 0 or None")
        self._scripts[path] = deque(_Answer(code, delay, retry_after) for code in codes)

    def reset(self) -> None:
        """Forget every recorded event (secrets, scripts and waiters stay)."""
        self._records = []
        self._events = []
        self._ids.clear()

    # --- what arrived -----------------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every verified delivery in arrival order, duplicates included (treat as read-only)."""
        if len(self._events) < len(self._records):
            self._events.extend(_materialize(r) for r in self._records[len(self._events) :])
        return self._events

    def events_json(self) -> bytes:
        """Return the ``GET /_events`` document, serialized (bodies are embedded as sent)."""
        materialized = len(self._events)
        events = [ev.to_json() for ev in self._events]
        for webhook_id, timestamp, path, body, received_at, raw, status in self._records[
            materialized:
        ]:
            events.append(
                {
                    "webhookId": webhook_id,
                    "timestamp": timestamp,
                    "path": path,
                    "event": orjson.Fragment(body),
                    "receivedAt": received_at,
                    "attemptHeaders": _decode_headers(raw),
                    "status": status,
                }
            )
        return orjson.dumps(
            {"events": events, "unique": len(self._ids), "duplicates": self.duplicates()}
        )

    def received(self) -> int:
        """Return how many deliveries were recorded, duplicates included."""
        return len(self._records)

    def bodies(self, path: str | None = None) -> list[tuple[str, bytes, int]]:
        """Return (``webhook-id``, body as received, status answered) of each delivery, in
        order, optionally only those to *path*."""
        return [
            (webhook_id, body, status)
            for webhook_id, _, p, body, _, _, status in self._records
            if path is None or p == path
        ]

    def unique_ids(self) -> set[str]:
        """Return the distinct ``webhook-id`` values recorded so far."""
        return set(self._ids)

    def duplicates(self) -> int:
        """Return how many recorded deliveries repeated an already seen ``webhook-id``."""
        return len(self._records) - len(self._ids)

    async def wait_for(self, count: int, timeout: float) -> None:  # noqa: ASYNC109 - API
        """Wait until ``count`` distinct webhook ids have arrived; :class:`TimeoutError` after
        ``timeout`` seconds otherwise."""
        if len(self._ids) >= count:
            return
        waiter = _Waiter(count)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter.done.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{len(self._ids)} of {count} unique webhooks arrived within {timeout} s"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # --- request handling (used by create_app) ------------------------------------------------

    def _record(self, record: _Record, event: dict[str, Any]) -> None:
        """Record one delivery (``event`` is its parsed body), wake the waiters it satisfies
        and print it if asked."""
        self._records.append(record)
        webhook_id = record[0]
        if webhook_id not in self._ids:
            self._ids.add(webhook_id)
            if self._waiters:
                unique = len(self._ids)
                for waiter in self._waiters:
                    if unique >= waiter.count:
                        waiter.done.set()
        if self.printer is not None:
            pending = self._records[len(self._events) : -1]
            self._events.extend(_materialize(r) for r in pending)
            received = _materialize(record, event)
            self._events.append(received)
            self.printer(received)

    def next_answer(self, path: str) -> _Answer | None:
        """Pop the next scripted answer for ``path``, or None when none is left."""
        queue = self._scripts.get(path)
        if not queue:
            return None
        answer = queue.popleft()
        if not queue:
            del self._scripts[path]
        return answer

    def check(self, body: bytes, headers: Mapping[str, str]) -> tuple[str, int]:
        """Verify one delivery; return its ``(webhook_id, timestamp)``.

        Raises :class:`WebhookVerificationError` when verification is on and it fails.
        """
        if self.verify_signatures:
            if not self._keys:
                raise WebhookVerificationError("the receiver has no secret configured")
            return verify_keys(body, headers, self._keys)
        msg_id = headers.get(HEADER_ID)
        if not msg_id:
            self._anonymous += 1
            msg_id = f"anonymous_{self._anonymous}"
        raw_ts = headers.get(HEADER_TIMESTAMP, "")
        timestamp = int(raw_ts) if raw_ts.isascii() and raw_ts.isdigit() else 0
        return msg_id, timestamp


def _check_status(code: int) -> None:
    if isinstance(code, bool) or not isinstance(code, int) or not 200 <= code <= 599:
        raise ValueError(f"status code must be an integer in 200-599, got {code!r}")
