"""A listing of watches, one page at a time: the page and its opaque cursor (encode, decode,
refuse one this relay did not hand out, or one handed out for a listing with other filters)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from relay.domain.watch import Watch


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    watches: list[Watch]
    next_cursor: str | None


class CursorError(ValueError):
    """A listing cursor that this relay did not hand out, or not for these filters."""


def listing_of(tenant: str, video_id: str | None, status: str | None) -> str:
    """A short tag of one listing (its tenant and filters): a cursor carries it, so a cursor
    of one listing used with other filters is refused, not read as a position in an index
    it does not point into (a final status is ordered by when watches became final, the
    others by when they were made)."""
    return hashlib.sha256(f"{tenant}\0{video_id or ''}\0{status or ''}".encode()).hexdigest()[:8]


def encode_cursor(score: int, member: str, listing: str = "") -> str:
    """An opaque cursor pointing just after (*score*, *member*) in newest-first order, of the
    listing tagged *listing* (:func:`listing_of`)."""
    raw = f"{score}:{member}:{listing}" if listing else f"{score}:{member}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, listing: str = "") -> tuple[int, str]:
    """Inverse of :func:`encode_cursor`; :class:`CursorError` when malformed or handed out
    for another listing than *listing*. A cursor without a tag (made before cursors had
    one) is taken as it is."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, member, *tag = raw.split(":", 2)
        if not member.startswith("wat_"):
            raise ValueError
        position = int(score), member
    except (ValueError, UnicodeDecodeError):
        raise CursorError("not a cursor returned by this API") from None
    if tag and listing and len(tag[0]) != len(listing):  # cut short or padded: not ours
        raise CursorError("not a cursor returned by this API")
    if tag and listing and tag[0] != listing:
        raise CursorError(
            "this cursor belongs to another listing (other filters -- videoId, status -- or"
            " another API key's tenant): list again without it"
        )
    return position
