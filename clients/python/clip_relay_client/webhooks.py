"""Verifying the relay's webhooks: Standard Webhooks (``v1``, HMAC-SHA256), implemented here
with the standard library alone.

A delivery carries ``webhook-id`` (the event id, the same on every retry: dedupe on it),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
(space-separated ``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, several while
a secret is being rotated); the key is the base64 part of the ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import numbers
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Protocol, cast

from clip_relay_client._errors import WebhookVerificationError

__all__ = ["TOLERANCE", "Event", "EventType", "Headers", "verify"]

TOLERANCE: Final = 300  # seconds a timestamp may be off, either way
EventType = Literal["clips.ready", "video.failed", "watch.expired", "watch.ping"]
_PREFIX: Final = "whsec_"


class Event(Mapping[str, Any]):
    """A verified event: ``.type``, ``.timestamp`` (an aware datetime), ``.data`` and ``.id``
    (the ``webhook-id``), and readable like the JSON it came as (``event["data"]["clips"]``,
    ``dict(event)``)."""

    __slots__ = ("_doc", "id")

    def __init__(self, doc: Mapping[str, Any], webhook_id: str = "") -> None:
        self._doc = dict(doc)
        self.id = webhook_id

    @property
    def type(self) -> EventType:
        """``clips.ready``, ``video.failed``, ``watch.expired`` or ``watch.ping``."""
        return cast(EventType, str(self._doc["type"]))  # (as sent: not checked)

    @property
    def timestamp(self) -> datetime:
        """When the event happened (not when this attempt was sent)."""
        return datetime.fromisoformat(str(self._doc["timestamp"]))

    @property
    def data(self) -> Mapping[str, Any]:
        """The event's data: always ``watchId``, ``videoId`` and ``metadata``."""
        data: Mapping[str, Any] = self._doc["data"]
        return data

    def __getitem__(self, key: str) -> Any:
        return self._doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, data={self.data!r})"


def _key(secret: str) -> bytes:
    """The HMAC key of a secret: its base64 part (``whsec_`` may be left off, as other
    Standard Webhooks libraries allow)."""
    if not isinstance(secret, str) or not secret:
        raise ValueError(f"a webhook secret is a string, {_PREFIX}...")
    encoded = secret.removeprefix(_PREFIX).encode("ascii", "replace")
    encoded += b"=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not valid base64") from None
    if not key:  # ("whsec_" alone: a setting half filled in, not a secret no body matches)
        raise ValueError(f"the webhook secret is empty after {_PREFIX}")
    return key


def finite_seconds(value: object, what: str) -> float:
    """*value* as a finite float (a bool is not a number of seconds); ValueError saying
    *what* it should be otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what}, not {value!r}")
    try:
        out = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{what}, not {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what}, not {value!r}")
    return out


class Headers(Protocol):
    """What :func:`verify` reads of a request's headers: ``get`` and ``items``. A mapping
    (a dict, aiohttp's, Starlette's, werkzeug's), or the standard library's
    ``http.server`` headers (an ``email.message.Message``)."""

    def get(self, name: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


def _header(headers: Headers, name: str) -> str:
    if not (callable(getattr(headers, "get", None)) and callable(getattr(headers, "items", None))):
        raise TypeError(f"headers are the request's headers (a mapping), not {headers!r}")
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    if not value:
        raise WebhookVerificationError(f"missing header {name}")
    return value


def verify(
    secret: str | Sequence[str],
    body: bytes,
    headers: Headers,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> Event:
    """Check a delivery's signature and timestamp and return its event.

    *body* is the raw request body, exactly as received (bytes); *headers* are looked up
    without regard to case. *secret* is the watch's ``whsec_`` secret, or several (any may
    match). The timestamp must be within *tolerance* seconds of *now* (default: the current
    time); any of the space-separated ``v1`` signatures may match. Raises
    :class:`WebhookVerificationError` otherwise, :class:`ValueError` for a malformed secret
    or a *tolerance* or *now* that is not a finite number (or a negative tolerance),
    :class:`TypeError` for *headers* that are not a mapping.
    """
    # (NaN compares false: a tolerance read as float("nan") would let any timestamp pass)
    tolerance = finite_seconds(tolerance, "tolerance is a finite number of seconds, 0 or more")
    if tolerance < 0:
        raise ValueError(f"tolerance is a finite number of seconds, 0 or more, not {tolerance!r}")
    current = time.time() if now is None else finite_seconds(now, "now is a finite Unix time (s)")
    if isinstance(secret, str):
        secret = [secret]
    elif not isinstance(secret, Sequence):  # None: an unset environment variable, say
        raise ValueError(f"a webhook secret is a string, {_PREFIX}..., or a list of them")
    keys = [_key(s) for s in secret]
    if not keys:
        raise ValueError("give at least one webhook secret")
    if isinstance(body, str):
        body = body.encode()
    msg_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp").strip()
    signatures = _header(headers, "webhook-signature")
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 15):
        raise WebhookVerificationError("invalid webhook-timestamp: expected Unix seconds")
    timestamp = int(raw_ts)
    if not abs(current - timestamp) <= tolerance:
        off = math.ceil(abs(current - timestamp))  # (over the tolerance: never shown as it)
        when = "old" if current > timestamp else "in the future"
        raise WebhookVerificationError(
            f"webhook-timestamp is {off} s {when} (tolerance {tolerance:g} s)"
        )
    given: list[bytes] = []
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            given.append(base64.b64decode(encoded.encode("ascii", "replace"), validate=True))
        except (binascii.Error, ValueError):
            continue
    signed = f"{msg_id}.{timestamp}.".encode() + body
    matched = False
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        for candidate in given:  # every comparison runs: the time tells nothing
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no matching signature")
    try:
        doc = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), dict) and "type" in doc):
        raise WebhookVerificationError("the body is not an event (type, timestamp, data)")
    return Event(doc, msg_id)
