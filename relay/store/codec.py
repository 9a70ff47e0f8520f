"""How the domain types are laid out in Redis: the watch hash and the video hash.

A watch is one hash of short fields, so Redis keeps it as a compact listpack (every value
under 64 bytes, as a registration with a callback URL of ordinary length has): the
registration (one field each), the signing secrets (sealed, one JSON field), the event
state, and the attempt records (``#<n>``, see :mod:`relay.domain.attempts`). Its event's
id is derived from the watch id and the event type; its body is built from the fields and,
for ``clips.ready``, the video's clips document (``cr:src:<video>``), stored once per video.
A video hash holds its poll state.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from relay.domain.ids import event_id
from relay.domain.video import VideoState
from relay.domain.watch import SecretEntry, Watch

# the watch hash's fields, in the order HMGET reads them (the scripts take this list)
FIELDS: tuple[str, ...] = (
    "tenant",
    "video",
    "url",
    "min",
    "max",
    "fav",
    "sortBy",
    "order",
    "meta",
    "created",
    "secrets",
    "status",
    "updated",
    "event",  # the event type ('' before the final event)
    "attempt",
    "finalAt",
    "vStatus",
    "vProgress",
    "vError",
    "lastType",
    "deliveredAt",
    "lastError",
)
RECORD_PREFIX = "#"  # attempt records: '#1', '#2', ... (the last MAX_ATTEMPTS_KEPT)
RECORDS_FIELD = "n"  # attempt records written so far


def registration(w: Watch) -> list[str]:
    """The fields a new watch is written with: (name, value) pairs, flat."""
    return [
        "tenant",
        w.tenant,
        "video",
        w.video_id,
        "url",
        w.callback_url,
        "min",
        repr(float(w.min_score)),
        "max",
        "" if w.max_score is None else repr(float(w.max_score)),
        "fav",
        "1" if w.favorited_only else "",
        "sortBy",
        w.sort_by,
        "order",
        w.sort_order,
        "meta",
        orjson.dumps(w.metadata).decode(),
        "created",
        str(w.created_ms),
        "secrets",
        dump_secrets(w.secrets),
        "status",
        "watching",
    ]


def watch_from_fields(watch_id: str, v: Sequence[str | None]) -> Watch | None:
    """A watch from its hash's :data:`FIELDS` (as HMGET returns them); None when it has
    none (no such watch)."""
    (
        tenant,
        video,
        url,
        lo,
        hi,
        fav,
        sort_by,
        order,
        meta,
        created,
        secrets,
        status,
        updated,
        event,
        attempt,
        final_at,
        v_status,
        v_progress,
        v_error,
        last_type,
        delivered_at,
        last_error,
    ) = v
    if not status or tenant is None:
        return None
    created_ms = int(created or 0)
    return Watch(
        id=watch_id,
        tenant=tenant,
        video_id=video or "",
        callback_url=url or "",
        min_score=float(lo or 0),
        max_score=float(hi) if hi else None,
        favorited_only=fav == "1",
        sort_by=sort_by or "score",
        sort_order=order or "desc",
        metadata=orjson.loads(meta) if meta else {},
        secrets=load_secrets(secrets or "[]"),
        status=status,
        video_status=v_status or None,
        video_progress=float(v_progress) if v_progress else None,
        video_error=v_error or None,
        last_event_type=last_type or None,
        created_ms=created_ms,
        updated_ms=int(updated) if updated else created_ms,
        delivered_ms=int(delivered_at) if delivered_at else None,
        last_error=last_error or None,
        event_id=event_id(watch_id, event) if event else "",
        event_type=event or "",
        attempt=int(attempt or 0),
        final_ms=int(final_at) if final_at else None,
    )


def dump_secrets(entries: Sequence[SecretEntry]) -> str:
    """The ``secrets`` field of a watch hash: [sealed, expires ms] per secret."""
    return orjson.dumps([[s.sealed, s.expires_ms] for s in entries]).decode()


def load_secrets(raw: str) -> list[SecretEntry]:
    """Inverse of :func:`dump_secrets`."""
    return [SecretEntry(str(sealed), int(exp)) for sealed, exp in orjson.loads(raw or "[]")]


def video_from_hash(video_id: str, h: dict[str, str]) -> VideoState:
    """Rebuild a video's poll state from its hash; an empty hash is a video seen for the
    first time."""
    return VideoState(
        video_id=video_id,
        phase=h.get("phase") or "poll",
        status=h.get("status", ""),
        progress=_opt_float(h.get("progress", "")),
        errors=int(h.get("errors") or 0),
        not_found=int(h.get("notFound") or 0),
        auth_logged_ms=int(h.get("authLoggedAt") or 0),
        completed_ms=int(h.get("completedAt") or 0),
        loaded=h,
    )


def video_hash(state: VideoState) -> dict[str, str]:
    """The video hash's fields to write."""
    return {
        "phase": state.phase,
        "status": state.status,
        "progress": "" if state.progress is None else repr(state.progress),
        "errors": str(state.errors),
        "notFound": str(state.not_found),
        "authLoggedAt": str(state.auth_logged_ms),
        "completedAt": str(state.completed_ms),
    }


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None
