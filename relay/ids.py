"""Identifiers: random watch ids, and event ids derived from what they identify."""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _encode(data: bytes, length: int) -> str:
    n = int.from_bytes(data, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(out)


def new_watch_id() -> str:
    """A fresh watch id, ``wat_`` + 24 base-36 characters (~124 bits)."""
    return "wat_" + _encode(secrets.token_bytes(16), 24)


def event_id(watch_id: str, event_type: str) -> str:
    """The id of *event_type* for *watch_id*: the same whenever it is computed.

    A watch gets at most one event of each type, so deriving the id makes event creation
    idempotent: a worker that dies mid fan-out and is re-run creates the same ids again.
    """
    digest = hashlib.sha256(f"{watch_id}\x00{event_type}".encode()).digest()
    return "evt_" + _encode(digest[:16], 24)
