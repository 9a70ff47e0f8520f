"""The ScaleReach API client: status and clips of a video, parsed tolerantly (UPSTREAM.md).

It never raises for what the upstream answers: every call returns a :class:`Reply` whose
``kind`` tells the poller what to do. Only the caller decides about retries and backoff.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import orjson

from relay.constants import RETRY_AFTER_CAP
from relay.domain.clips import Clip, number, parse_clips
from relay.domain.clock import now_ms

ReplyKind = Literal["ok", "not_found", "rate_limited", "auth", "error"]


@dataclass(frozen=True, slots=True)
class VideoStatus:
    """What a status poll tells: the video's status, the job's progress, the error message."""

    status: str
    progress: float | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of one upstream request."""

    kind: ReplyKind
    http_status: int | None = None
    detail: str = ""  # for logs: never holds the API key
    retry_after: float | None = None
    video: VideoStatus | None = None
    clips: list[Clip] = field(default_factory=list)
    raw: bytes = b""


def retry_after_seconds(
    value: str | None, default: float | None = None, *, now: float | None = None
) -> float | None:
    """A ``Retry-After`` header in seconds, capped at an hour; *default* when absent or
    unreadable. Both forms of RFC 9110: delta-seconds and an HTTP-date."""
    if value is None:
        return default
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return default
        if when.tzinfo is None:
            return default
        # (against Redis' clock, as every worker: the pause it becomes is shared)
        seconds = when.timestamp() - (now_ms() / 1000 if now is None else now)
        seconds = max(seconds, 0.0)
    if seconds != seconds or seconds < 0:
        return default
    return min(seconds, RETRY_AFTER_CAP)


def parse_status(payload: Any) -> VideoStatus:
    """A status response: ``video.status`` required, ``job`` may be null, extras ignored."""
    if not isinstance(payload, dict):
        raise ValueError("status response is not an object")
    video = payload.get("video")
    if not isinstance(video, dict) or not isinstance(video.get("status"), str):
        raise ValueError("status response has no video.status")
    job = payload.get("job")
    progress = number(job.get("progress")) if isinstance(job, dict) else None
    if progress is not None:
        progress = max(0.0, min(100.0, progress))
    error = video.get("errorMessage")
    if not isinstance(error, str) and isinstance(job, dict):
        error = job.get("failedReason")
    return VideoStatus(
        status=video["status"],
        progress=progress,
        error_message=error if isinstance(error, str) else None,
    )


class UpstreamClient:
    """ScaleReach API calls over one shared :class:`aiohttp.ClientSession`."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, api_key: str, timeout: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))

    async def status(self, video_id: str) -> Reply:
        """``GET /api/videos/{id}/status``."""
        reply = await self._get(f"/api/videos/{video_id}/status")
        if reply.kind != "ok":
            return reply
        try:
            video = parse_status(orjson.loads(reply.raw))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return Reply("error", reply.http_status, f"malformed status response: {exc}")
        return Reply("ok", reply.http_status, video=video, raw=reply.raw)

    async def clips(self, video_id: str) -> Reply:
        """``GET /api/videos/{id}/clips``: every clip, unfiltered (watches filter locally)."""
        reply = await self._get(f"/api/videos/{video_id}/clips")
        if reply.kind != "ok":
            return reply
        try:
            clips = parse_clips(orjson.loads(reply.raw))
        except (orjson.JSONDecodeError, ValueError) as exc:
            return Reply("error", reply.http_status, f"malformed clips response: {exc}")
        return Reply("ok", reply.http_status, clips=clips, raw=reply.raw)

    async def _get(self, path: str) -> Reply:
        try:
            async with self._session.get(
                self._base + path,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                code = resp.status
                if code == 200:
                    return Reply("ok", code, raw=body)
                if code == 404:
                    return Reply("not_found", code, "video not found")
                if code == 429:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    if wait is None:
                        wait = _body_retry_after(body)
                    return Reply("rate_limited", code, "rate limited", retry_after=wait)
                if code in (401, 402, 403):
                    return Reply("auth", code, _error_text(body))
                wait = retry_after_seconds(resp.headers.get("Retry-After")) if code == 503 else None
                return Reply("error", code, f"HTTP {code}: {_error_text(body)}", retry_after=wait)
        except TimeoutError:
            return Reply("error", None, "timeout")
        except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError, ValueError) as exc:
            return Reply("error", None, f"{type(exc).__name__}: {exc}"[:200])


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:  # e.g. a proxy's HTML page: one line, for a log
        return " ".join(body[:200].decode(errors="replace").split())
    if isinstance(data, dict):
        msg = data.get("error") or data.get("message")
        if isinstance(msg, str):
            return msg[:200]
    return ""


def _body_retry_after(body: bytes) -> float | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = number(data.get("retryAfter")) if isinstance(data, dict) else None
    return None if value is None else min(max(value, 0.0), RETRY_AFTER_CAP)
