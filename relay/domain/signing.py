"""Standard Webhooks signing and verification (symmetric, ``v1`` / HMAC-SHA256).

A secret is ``whsec_`` followed by the standard base64 of 24 to 64 random bytes. A delivery
carries three headers:

- ``webhook-id``: the event id, the same on every retry;
- ``webhook-timestamp``: Unix seconds of the attempt;
- ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>``
  entries, one per signing key (several while a secret is being rotated).

Only the standard library does the cryptography; :func:`verify` parses the verified body with
orjson (a dependency of the relay already). No message raised here ever contains a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

__all__ = [
    "CONTENT_TYPE",
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SECRET_BYTES",
    "MIN_SECRET_BYTES",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "is_valid_secret",
    "secret_bytes",
    "sign_headers",
    "signature",
    "verify",
    "verify_keys",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64
GENERATED_SECRET_BYTES: Final = 32
DEFAULT_TOLERANCE: Final = 300

HEADER_ID: Final = "webhook-id"
HEADER_TIMESTAMP: Final = "webhook-timestamp"
HEADER_SIGNATURE: Final = "webhook-signature"
CONTENT_TYPE: Final = "application/json"

_SIG_VERSION: Final = "v1"
_SHA256: Final = hashlib.sha256
_MAX_TIMESTAMP_DIGITS: Final = 15


class WebhookVerificationError(Exception):
    """A delivery failed verification: a header is missing or malformed, its timestamp is
    outside the tolerance, or no signature matches any of the given secrets."""


def generate_secret() -> str:
    """Return a new random secret: ``whsec_`` + base64 of 32 bytes from :mod:`secrets`."""
    raw = _secrets.token_bytes(GENERATED_SECRET_BYTES)
    return SECRET_PREFIX + base64.b64encode(raw).decode("ascii")


def secret_bytes(secret: str) -> bytes:
    """Decode a ``whsec_`` secret into its key bytes.

    The part after the prefix must be standard base64 (missing ``=`` padding is tolerated)
    of 24 to 64 bytes. Raises :class:`ValueError` otherwise; the message never contains the
    secret or any part of it.
    """
    if not isinstance(secret, str):
        raise ValueError("webhook secret must be a string")
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret[len(SECRET_PREFIX) :]
    if not encoded:
        raise ValueError("webhook secret is empty after its prefix")
    if not encoded.isascii():
        raise ValueError("webhook secret is not valid base64")
    data = encoded.encode("ascii")
    data += b"=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        # `from None`: keep the decoder's own exception (and its context) out of tracebacks.
        raise ValueError("webhook secret is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"webhook secret must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, "
            f"got {len(raw)}"
        )
    return raw


def is_valid_secret(secret: str) -> bool:
    """Tell whether ``secret`` is a well-formed ``whsec_`` secret (see :func:`secret_bytes`)."""
    try:
        secret_bytes(secret)
    except ValueError:
        return False
    return True


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``v1,<base64>`` signature of one attempt, signed with ``key`` (raw bytes)."""
    mac = hmac.new(key, digestmod=_SHA256)
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def sign_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the headers of one attempt: ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature`` (one ``v1`` signature per key, space-separated, in key order) and
    ``content-type: application/json``. Raises :class:`ValueError` when ``keys`` is empty."""
    if not keys:
        raise ValueError("at least one signing key is required")
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: " ".join(signature(key, msg_id, timestamp, body) for key in keys),
        "content-type": CONTENT_TYPE,
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Look ``name`` (lower case) up in ``headers`` without regard to case."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _parse_timestamp(raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_TIMESTAMP_DIGITS):
        raise WebhookVerificationError(
            f"invalid {HEADER_TIMESTAMP} header: expected integer Unix seconds"
        )
    return int(text)


def _passed_signatures(header: str) -> list[bytes]:
    """Decode the ``v1`` entries of a ``webhook-signature`` header; other versions (``v1a``)
    and undecodable entries are skipped."""
    found: list[bytes] = []
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != _SIG_VERSION or not encoded.isascii():
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify_keys(
    payload: bytes,
    headers: Mapping[str, str],
    keys: Sequence[bytes],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> tuple[str, int]:
    """Verify one delivery against already decoded keys; return ``(webhook_id, timestamp)``.

    The fast path for receivers that decode their secrets once (see :func:`secret_bytes`).
    Raises :class:`WebhookVerificationError` exactly as :func:`verify` does, and
    :class:`ValueError` when ``keys`` is empty.
    """
    if not keys:
        raise ValueError("at least one key is required to verify a webhook")
    msg_id = _header(headers, HEADER_ID)
    raw_ts = _header(headers, HEADER_TIMESTAMP)
    raw_sig = _header(headers, HEADER_SIGNATURE)
    if not (msg_id and raw_ts and raw_sig):
        present = ((HEADER_ID, msg_id), (HEADER_TIMESTAMP, raw_ts), (HEADER_SIGNATURE, raw_sig))
        missing = [name for name, value in present if not value]
        raise WebhookVerificationError(f"missing required header(s): {', '.join(missing)}")

    timestamp = _parse_timestamp(raw_ts)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError(
            f"message timestamp too old ({int(current - timestamp)} s, tolerance {tolerance} s)"
        )
    if timestamp > current + tolerance:
        raise WebhookVerificationError(
            f"message timestamp too new ({int(timestamp - current)} s ahead, "
            f"tolerance {tolerance} s)"
        )

    passed = _passed_signatures(raw_sig)
    if not passed:
        raise WebhookVerificationError(f"no v1 signature in the {HEADER_SIGNATURE} header")
    prefix = f"{msg_id}.{timestamp}.".encode()
    for key in keys:
        mac = hmac.new(key, digestmod=_SHA256)
        mac.update(prefix)
        mac.update(payload)
        expected = mac.digest()
        for candidate in passed:
            if hmac.compare_digest(expected, candidate):
                return msg_id, timestamp
    raise WebhookVerificationError("no matching signature found")


def verify(
    payload: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """Verify a delivery as a receiver would, and return its JSON body parsed with orjson.

    ``headers`` are looked up without regard to case. ``secret`` is one ``whsec_`` secret or
    several (any may match, as during a rotation); the timestamp must be within
    ``tolerance`` seconds of ``now`` (default: the current time) either way.

    Raises :class:`WebhookVerificationError` when a header is missing or malformed, the
    timestamp is out of tolerance, no signature matches, or the verified body is not JSON;
    :class:`ValueError` when a secret is malformed or none is given.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("at least one secret is required to verify a webhook")
    keys = [secret_bytes(s) for s in secrets]
    verify_keys(payload, headers, keys, tolerance=tolerance, now=now)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WebhookVerificationError("webhook body is not valid JSON") from None
