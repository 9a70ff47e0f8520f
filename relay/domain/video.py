"""A video's poll state: what the poller knows of one upstream video, shared by its watches."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class VideoState:
    """Poll state of one upstream video, shared by all the watches on it."""

    video_id: str
    phase: str = "poll"  # poll: status checks; render: completed, waiting for clips
    status: str = ""
    progress: float | None = None
    errors: int = 0  # consecutive failed polls (5xx, timeouts, auth), for backoff
    not_found: int = 0  # consecutive 404s
    auth_logged_ms: int = 0
    # why the last poll failed, for its watches' lastError while it lasts ('' once one works)
    poll_error: str = ""
    completed_ms: int = 0  # when `completed` was first seen
    changed_ms: int = 0  # when the status or progress last changed (its watches' updatedAt)
    loaded: dict[str, str] = field(default_factory=dict, repr=False)  # the hash as read
