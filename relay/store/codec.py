"""How the domain types are laid out in Redis: a watch's two keys and the video hash.

A watch is its registration, one JSON string written once (``cr:w:<id>:r``; a key rotation's
reseal alone rewrites its credential: :mod:`relay.store.reseal`), and a small
hash of what changes (``cr:w:<id>``), every value short so Redis keeps it as a compact
listpack: its status, its sealed signing secrets, its event (``ev``: type, time, the
video's status and progress then, in one field), its attempt count and records (``#<n>``,
see :mod:`relay.domain.attempts`), its last error. The event's id is derived from the watch
id and its type; its body is built from these and, for ``clips.ready``, the video's clips
document (``cr:src:<video>``, once per video). A video hash holds its poll state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import zip_longest

import orjson

from relay.domain.delivery import AttemptResult
from relay.domain.ids import event_id
from relay.domain.origin import url_origin_tag
from relay.domain.video import VideoState
from relay.domain.watch import SecretEntry, Watch

# The state hash: a few fields, each written whole by one transition --
#   video    the video id (for claiming: which clips document)
#   secrets  the sealed signing secrets, JSON (a rotation rewrites it)
#   st       the delivery state, packed: status|attempt|n|t|deliveredAt|lastType|lastError
#            (n: attempt records written so far; t: when it last changed, ms)
#   ev       the event, once made: type|at|progress|videoStatus|videoError
#   vSeen    a watch cancelled before its event: progress|videoStatus of the video then
#   updated  when a secret was last rotated, ms
#   #<n>     attempt record n (the last MAX_ATTEMPTS_KEPT)
#   p<k>     watch.ping record k (the last MAX_ATTEMPTS_KEPT), pn: pings so far
# so a fan-out writes two short fields per watch and an attempt two.
STATE_FIELDS: tuple[str, ...] = ("st", "ev", "secrets", "vSeen", "updated")
# what sending needs of a claimed watch's state (its status is read too: what a cancel
# changed between the claim and this read shows)
CLAIM_FIELDS: tuple[str, ...] = ("st", "ev", "secrets", "base")
RECORD_PREFIX = "#"  # attempt records: '#1', '#2', ... (the last MAX_ATTEMPTS_KEPT)
PING_PREFIX = "p"  # watch.ping records: 'p1', 'p2', ... (counted in 'pn'; the last kept)
WATCHING = "watching|0|0|0|||"  # the delivery state of a new watch


def registration_json(w: Watch) -> bytes:
    """The registration, which never changes (but for a key rotation's reseal of its
    credential): the watch's ``:r`` string."""
    doc = {
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
    if w.callback_auth:  # (only then: most callbacks carry no credential)
        doc["callbackAuth"] = w.callback_auth
    return orjson.dumps(doc)


def watch_from_registration(watch_id: str, reg: str | bytes) -> Watch:
    """A watch from its registration alone (status ``watching``, nothing else set)."""
    spec = orjson.loads(reg)
    created = spec["createdAt"]
    return Watch(
        id=watch_id,
        tenant=spec["tenant"],
        video_id=spec["videoId"],
        callback_url=spec["callbackUrl"],
        min_score=spec["minScore"],
        max_score=spec["maxScore"],
        favorited_only=spec["favoritedOnly"],
        sort_by=spec["sortBy"],
        sort_order=spec["sortOrder"],
        metadata=spec["metadata"],
        created_ms=created,
        updated_ms=created,
        callback_auth=spec.get("callbackAuth", ""),
    )


def apply_state(w: Watch, st: str | None) -> None:
    """Set the watch's delivery state from its ``st`` field."""
    if not st:
        return
    status, attempt, records, changed, delivered, last_type, last_error = st.split("|", 6)
    w.status = status
    w.attempt = int(attempt or 0)
    w.records = int(records or 0)
    w.updated_ms = max(w.updated_ms, int(changed or 0))
    w.delivered_ms = int(delivered) if delivered else None
    w.last_event_type = last_type or None
    w.last_error = last_error or None


def apply_event(w: Watch, ev: str | None) -> None:
    """Set the watch's event from its ``ev`` field (nothing when it has none)."""
    if not ev:
        return
    event_type, at, progress, video_status, video_error = ev.split("|", 4)
    w.event_type = event_type
    w.event_id = event_id(w.id, event_type)
    w.final_ms = int(at)
    w.updated_ms = max(w.updated_ms, w.final_ms)
    show_video(w, video_status, progress)
    w.video_error = video_error or None


def show_video(w: Watch, status: str | None, progress: str | None) -> None:
    """The video's status and progress as the watch shows them."""
    w.video_status = status or None
    w.video_progress = float(progress) if progress else None


def watch_from_state(watch_id: str, reg: str | bytes, v: Sequence[str | None]) -> Watch:
    """A watch from its registration and its state's :data:`STATE_FIELDS`."""
    st, ev, secrets, seen, updated = v
    w = watch_from_registration(watch_id, reg)
    apply_state(w, st)
    apply_event(w, ev)
    w.secrets = load_secrets(secrets or "[]")
    w.updated_ms = max(w.updated_ms, int(updated or 0))
    if seen:
        progress, video_status = seen.split("|", 1)
        show_video(w, video_status, progress)
    return w


def claimed_watch(watch_id: str, reg: str | bytes, v: Sequence[str | None]) -> Watch:
    """A claimed watch from its registration and its state's :data:`CLAIM_FIELDS`."""
    st, ev, secrets, base = v
    w = watch_from_state(watch_id, reg, (st, ev, secrets, None, None))
    w.attempt_base = int(base or 0)
    return w


def state_field(r: AttemptResult, now: int) -> str:
    """The ``st`` field of a watch after the attempt *r* (recorded at *now*)."""
    delivered = now if r.outcome == "ok" else r.delivered_ms
    last_type = r.last_type if r.outcome == "retry" else r.event_type
    return (
        f"{r.status}|{r.attempt}|{r.record_no}|{now}|{'' if delivered is None else delivered}"
        f"|{last_type}|{r.last_error}"
    )


def dump_secrets(entries: Sequence[SecretEntry]) -> str:
    """The ``secrets`` field of a watch's state: [sealed, expires ms] per secret."""
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
        poll_error=h.get("pollError", ""),
        completed_ms=int(h.get("completedAt") or 0),
        changed_ms=int(h.get("changedAt") or 0),
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
        "pollError": state.poll_error,
        "completedAt": str(state.completed_ms),
        "changedAt": str(state.changed_ms),
    }


def _opt_float(raw: str) -> float | None:
    return float(raw) if raw else None


def waiting_entry(watch: Watch) -> str:
    """A watch's value in its video's waiting watches: ``tenant:origin-tag``
    (:func:`~relay.domain.origin.origin_tag`), what a fan-out counts per tenant and orders
    and paces by (:func:`fan_out_order`)."""
    return f"{watch.tenant}:{url_origin_tag(watch.callback_url)}"


def fan_out_order(waiting: Mapping[str, str]) -> list[tuple[str, str]]:
    """The watches of *waiting* (id -> :func:`waiting_entry`) in the order a fan-out gives
    them their events, each with its origin tag: round robin over (tenant, origin) groups
    -- so 20 watches of one receiver are among the first events made, however many
    thousands of another's wait on the same video. (An entry of a plain tenant, written
    before the tag was, has the empty tag.)"""
    by_entry: dict[str, list[str]] = {}
    for wid, entry in waiting.items():
        ids = by_entry.get(entry)
        if ids is None:
            by_entry[entry] = [wid]
        else:
            ids.append(wid)
    # each group in id order; the groups in the order of their first id (as if every id were
    # sorted and grouped, at a fraction of the cost: the noisy fan-outs order thousands)
    groups: list[list[tuple[str, str]]] = []
    for entry, ids in by_entry.items():
        ids.sort()
        tag = entry.partition(":")[2]
        groups.append([(wid, tag) for wid in ids])
    if len(groups) == 1:
        return groups[0]
    groups.sort(key=lambda group: group[0][0])
    return [item for row in zip_longest(*groups) for item in row if item is not None]
