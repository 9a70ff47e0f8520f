"""What the simulator holds: videos with their timelines and clips, injected faults, counters.

Everything is in memory, in one :class:`SimState` per application (``app[STATE]``); the
current time comes from its ``clock``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

VIDEO_FINAL_BAD: Final = frozenset({"failed", "error", "expired"})
VIDEO_FINAL: Final = VIDEO_FINAL_BAD | {"completed"}
VIDEO_WAITING: Final = frozenset({"pending", "pending_config"})
LOG_MAX: Final = 100_000

PathKind = Literal["status", "clips"]

# a clip URL its spec does not fix: the clips endpoint signs a CDN link instead
UNSET: Final[Any] = object()


@dataclass(slots=True)
class Step:
    """One timeline step: from ``at`` (absolute clock time) the video has ``status``."""

    status: str
    progress: float
    at: float


@dataclass(slots=True)
class Clip:
    """One clip of a video; ``fields`` holds every output field but the time-dependent ones."""

    id: str
    fields: dict[str, Any]
    render_after: float
    final_status: str
    download_url: Any = UNSET
    thumbnail_url: Any = UNSET


@dataclass(slots=True)
class Video:
    """A simulated video: its timeline (absolute times, sorted) and its clips."""

    id: str
    title: str
    created: float
    duration: float
    workspace_id: str
    error_message: str
    job_retention: float
    count: int | None
    clips: list[Clip]
    steps: list[Step] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # steps[i].at, for bisect
    final_since: list[float | None] = field(default_factory=list)
    first_completed: int | None = None
    processed_on: float | None = None  # first step not in VIDEO_WAITING

    def reindex(self) -> None:
        """Recompute the lookup lists after ``steps`` changed (steps are a handful)."""
        self.times = [s.at for s in self.steps]
        self.final_since = []
        self.first_completed = None
        self.processed_on = None
        prev: float | None = None
        for i, s in enumerate(self.steps):
            final = s.status in VIDEO_FINAL
            prev = (s.at if prev is None else prev) if final else None
            self.final_since.append(prev)
            if s.status == "completed" and self.first_completed is None:
                self.first_completed = i
            if s.status not in VIDEO_WAITING and self.processed_on is None:
                self.processed_on = s.at

    def index_at(self, now: float) -> int:
        """The index of the step in effect at ``now``, -1 before the first step."""
        return bisect_right(self.times, now) - 1

    def completed_at(self, now: float) -> float | None:
        """When the video first turned ``completed``, if it has by ``now``."""
        fc = self.first_completed
        if fc is None or self.times[fc] > now:
            return None
        return self.times[fc]


@dataclass(slots=True)
class Fault:
    """An injected fault, consumed by matching public-API requests in creation order."""

    id: str
    kind: str
    path: str
    video_id: str | None
    times: int
    retry_after: float | None
    delay: float

    def matches(self, path: PathKind, video_id: str) -> bool:
        """Whether this fault applies to a request for ``path`` on ``video_id``."""
        return (
            self.times != 0
            and (self.path == "*" or self.path == path)
            and (self.video_id is None or self.video_id == video_id)
        )


@dataclass(slots=True)
class Stats:
    """Counters and a bounded log of public-API requests."""

    requests: int = 0
    by_video: dict[str, dict[str, int]] = field(default_factory=dict)
    log: deque[tuple[float, str, str, int]] = field(default_factory=lambda: deque(maxlen=LOG_MAX))

    def record(self, at: float, path: PathKind, video_id: str, status: int) -> None:
        """Count one answered (or reset, status 0) request."""
        self.requests += 1
        per = self.by_video.get(video_id)
        if per is None:
            per = self.by_video[video_id] = {"status": 0, "clips": 0}
        per[path] += 1
        self.log.append((at, path, video_id, status))


@dataclass(slots=True)
class SimState:
    """Everything the simulator knows; one per application."""

    api_key: str
    url_ttl: float
    clock: Callable[[], float]
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    videos: dict[str, Video] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    fault_seq: int = 0

    def reset(self) -> None:
        """Forget videos, faults and stats."""
        self.videos.clear()
        self.faults.clear()
        self.stats = Stats()

    def take_fault(self, path: PathKind, video_id: str) -> Fault | None:
        """The first matching fault, consumed once (removed when used up)."""
        for i, f in enumerate(self.faults):
            if f.matches(path, video_id):
                if f.times > 0:
                    f.times -= 1
                    if f.times == 0:
                        del self.faults[i]
                return f
        return None

    def sign(self, kind: str, name: str, expires: int) -> str:
        """HMAC-SHA256 (hex) of one CDN object and its expiry."""
        msg = f"{kind}/{name}:{expires}".encode()
        return hmac.new(self.url_secret, msg, hashlib.sha256).hexdigest()


STATE: Final = web.AppKey("upstream_sim_state", SimState)
