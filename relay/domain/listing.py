"""A listing of watches, one page at a time: the page and its opaque cursor (encode, decode,
refuse one this relay did not hand out)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from relay.domain.watch import Watch


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    watches: list[Watch]
    next_cursor: str | None


class CursorError(ValueError):
    """A listing cursor that this relay did not hand out."""


def encode_cursor(score: int, member: str) -> str:
    """An opaque cursor pointing just after (*score*, *member*) in newest-first order."""
    return base64.urlsafe_b64encode(f"{score}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; :class:`CursorError` when malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member = raw.split(":", 1)
        if not member.startswith("wat_"):
            raise ValueError
        return int(score), member
    except (ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor returned by this API") from None
