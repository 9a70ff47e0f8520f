"""How the domain types are laid out in Redis: the watch hash and the video hash.

A watch hash holds the registration as one JSON field (``spec``), which never changes, and
each field that changes on its own (status, the current event, ...); the signing secrets
are one JSON field of sealed secrets. A video hash holds its poll state.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from relay.domain.video import VideoState
from relay.domain.watch import SecretEntry, Watch


def spec_json(w: Watch) -> bytes:
    """The registration, which never changes: one field of the watch hash."""
    return orjson.dumps(
        {
            "id": w.id,
            "tenant": w.tenant,
            "videoId": w.video_id,
            "callbackUrl": w.callback_url,
            "minScore": w.min_score,
            "maxScore": w.max_score,
            "favoritedOnly": w.favorited_only,
            "sortBy": w.sort_by,
            "sortOrder": w.sort_order,
            "metadata": w.metadata,
            "createdAt": w.created_ms,
        }
    )


def watch_from_spec(spec_json: str, status: str) -> Watch:
    """A watch from its registration (the ``spec`` field) and status alone: what making
    its event needs."""
    spec = orjson.loads(spec_json)
    created = spec["createdAt"]
    return Watch(
        id=spec["id"],
        tenant=spec["tenant"],
        video_id=spec["videoId"],
        callback_url=spec["callbackUrl"],
        min_score=spec["minScore"],
        max_score=spec["maxScore"],
        favorited_only=spec["favoritedOnly"],
        sort_by=spec["sortBy"],
        sort_order=spec["sortOrder"],
        metadata=spec["metadata"],
        status=status,
        created_ms=created,
        updated_ms=created,
    )


def watch_from_hash(h: dict[str, str]) -> Watch:
    """Rebuild a watch from its hash (as returned by HGETALL with decoded responses).

    The hash holds the registration as one JSON field (``spec``) and each field that
    changes on its own (status, the current event, ...); absent ones are unset.
    """
    w = watch_from_spec(h["spec"], h["status"])
    w.secrets = load_secrets(h.get("secrets", "[]"))
    w.video_status = h.get("videoStatus") or None
    w.video_progress = _opt_float(h.get("videoProgress", ""))
    w.last_event_type = h.get("lastEventType") or None
    w.updated_ms = int(h.get("updatedAt") or w.created_ms)
    w.delivered_ms = _opt_int(h.get("deliveredAt", ""))
    w.last_error = h.get("lastError") or None
    w.event_id = h.get("eventId", "")
    w.event_type = h.get("eventType", "")
    w.attempt = int(h.get("attempt") or 0)
    w.final_ms = _opt_int(h.get("finalAt", ""))
    w.clips_ms = _opt_int(h.get("clipsAt", ""))
    return w


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


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw else None
