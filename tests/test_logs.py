"""Log processors (relay/logs.py): secrets never reach a line, timestamps as structlog's own."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay import logs, metrics

API_KEY = "sr_live_" + "ab12" * 12
TENANT_KEY = "key-tenant-a-0123456789"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_secrets", ())
    logs.register_secrets([API_KEY, TENANT_KEY, "", "short"])  # empty and short ones ignored


class Leaky:
    """An object orjson would render with str(): its text carries a secret."""

    def __str__(self) -> str:
        return f"<client key={API_KEY}>"


def test_register_secrets_ignores_empty_and_short_values() -> None:
    assert logs._secrets == tuple(sorted([API_KEY, TENANT_KEY]))


def test_redact_replaces_secrets_wherever_they_are() -> None:
    line: dict[str, Any] = {
        "event": f"calling with {API_KEY}",
        "header": f"Bearer {TENANT_KEY}",
        "nested": {"list": [f"x{API_KEY}y", 3, None], "n": 5},
        "pair": ("a", TENANT_KEY),
        "object": Leaky(),
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "none": None,
    }
    out = logs.redact(None, "info", line)
    assert out["event"] == "calling with [redacted]"
    assert out["header"] == "Bearer [redacted]"
    assert out["nested"] == {"list": ["x[redacted]y", 3, None], "n": 5}
    assert out["pair"] == ["a", "[redacted]"]
    assert out["object"] == "<client key=[redacted]>"
    assert (out["count"], out["ratio"], out["flag"], out["none"]) == (3, 0.5, True, None)


def test_redact_leaves_clean_lines_as_they_are() -> None:
    line: dict[str, Any] = {"event": "delivery attempt", "watch_id": "wat_x", "attempt": 1}
    assert logs.redact(None, "info", dict(line)) == line


def test_timestamp_is_rfc3339_utc_with_microseconds_like_structlogs() -> None:
    ours = logs.timestamp(None, "info", {})["timestamp"]
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    shape = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
    assert shape.match(ours) and shape.match(theirs)
    parsed = datetime.fromisoformat(ours.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 1
    assert parsed.tzinfo == UTC


def test_timestamp_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    moments = [1_795_860_000.25, 1_795_860_000.5, 1_795_860_001.000001, 1_795_860_001.9999996]
    clock = iter(moments)
    monkeypatch.setattr(logs.time, "time", lambda: next(clock))
    stamps = [logs.timestamp(None, "info", {})["timestamp"] for _ in moments]
    assert stamps == [
        "2026-11-28T10:00:00.250000Z",
        "2026-11-28T10:00:00.500000Z",
        "2026-11-28T10:00:01.000001Z",
        "2026-11-28T10:00:02.000000Z",  # rounds up into the next second
    ]
    # the same instant as datetime renders it (always with six digits)
    for at, stamp in zip(moments, stamps, strict=True):
        rendered = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
        assert rendered.replace("+00:00", "Z") == stamp


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    """Where logs.setup(..., stream=out) writes; structlog and the root logger restored."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs._Output, "stream", None)
    yield io.BytesIO()
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


ROW = {"watch_id": "wat_1", "video_id": "vid_1", "attempt": 2, "error": f"bad {API_KEY}"}


def test_lines_write_what_info_writes_in_one_go(out: io.BytesIO) -> None:
    logs.setup("json", stream=out)
    logs.get("workers.deliverer").info("delivery attempt", **ROW)
    single = out.getvalue()
    out.seek(0)
    out.truncate()
    logs.lines("workers.deliverer", "delivery attempt", [dict(ROW), dict(ROW, attempt=3)])
    batch = out.getvalue()
    assert batch.endswith(b"\n") and batch.count(b"\n") == 2
    first, second = (orjson.loads(line) for line in batch.splitlines())
    expected = orjson.loads(single)
    for line in (first, second):
        assert line.keys() == expected.keys()  # the same fields, in the same order
        assert line.pop("timestamp") and line["error"] == "bad [redacted]"
    expected.pop("timestamp")
    assert first == expected and second == {**expected, "attempt": 3}


def test_lines_follow_the_level(out: io.BytesIO) -> None:
    logs.setup("json", level=logging.WARNING, stream=out)
    logs.lines("workers.deliverer", "delivery attempt", [dict(ROW)])
    assert out.getvalue() == b""


def test_lines_on_a_console_go_through_structlog(out: io.BytesIO) -> None:
    logs.setup("console", stream=out)
    logs.lines("workers.deliverer", "delivery attempt", [dict(ROW)])
    text = out.getvalue().decode()
    assert "delivery attempt" in text and "wat_1" in text and API_KEY not in text


class _Broken(io.BytesIO):
    """A stream that can no longer be written: the collector's pipe closed, the disk full."""

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_log_that_cannot_be_written_never_stops_the_caller(out: io.BytesIO) -> None:
    """Every line, structlog's or the batch writer's (the deliverer records its attempts
    right after logging them), is dropped and counted (a metric of both processes) instead
    of raising."""
    broken = _Broken()
    logs.setup("json", stream=broken)
    logs.get("workers.deliverer").info("delivery attempt", **ROW)
    logs.lines("workers.deliverer", "delivery attempt", [dict(ROW), dict(ROW, attempt=3)])
    assert logs.dropped() == 2
    exported = metrics.exposition().decode() + metrics.exposition(api=True).decode()
    assert exported.count("relay_log_writes_dropped_total 2.0") == 2  # (worker and API)


def test_a_broken_pipe_behind_a_buffer_is_counted_too(out: io.BytesIO) -> None:
    """stderr is buffered: after the collector's pipe closes, writes still fill the buffer
    and the flush fails. Every line is flushed as it is written, so each such line counts."""
    read, write = os.pipe()
    os.close(read)
    pipe = os.fdopen(write, "wb")
    try:
        logs.setup("json", stream=pipe)
        for _ in range(3):
            logs.get("workers.deliverer").info("delivery attempt", **ROW)
        assert logs.dropped() == 3
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


def test_the_redis_password_is_a_secret_of_the_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_URL's password (as written and percent-decoded) never reaches a log line, as
    the other secrets (Sentinel URLs too); a URL without one adds nothing."""
    from relay import cli

    monkeypatch.setattr(logs, "setup", lambda *_: None)  # (the test process' logging stays)
    for url, hidden in (
        ("redis://:s3cret-pass%21word@127.0.0.1:1/0", ["s3cret-pass%21word", "s3cret-pass!word"]),
        ("redis+sentinel://:sentinel-pass@127.0.0.1:26379,127.0.0.2:26379/main", ["sentinel-pass"]),
        (
            "redis://127.0.0.1:1/0?db=0&password=query-pass%40word",
            ["query-pass%40word", "query-pass@word"],
        ),
        ("redis://127.0.0.1:1/0", []),
    ):
        monkeypatch.setattr(logs, "_secrets", ())
        monkeypatch.setenv("REDIS_URL", url)
        cli._settings("upstream")
        for value in hidden:
            assert logs.redact(None, "info", {"event": f"x {value} y"})["event"] == "x [redacted] y"
        assert not set(logs._secrets) - set(hidden)


async def test_a_request_line_names_the_watch_and_the_tenant(
    out: io.BytesIO, api: TestClient[web.Request, web.Application]
) -> None:
    """The request line logs the route's template (``/v1/watches/{watch_id}``): a cancel,
    a redeliver or a rotation could not be tied to its watch (review, 2026-12-06). The
    watch id of the path is bound, as the tenant is; a path that is not a watch id is not
    (it is the caller's text)."""
    from tests.conftest import auth
    from tests.test_api import create

    logs.setup("json", stream=out)
    created = await create(api)
    await api.delete(f"/v1/watches/{created['id']}", headers=auth())
    await api.get("/v1/watches/not-an-id-" + "x" * 300, headers=auth())
    await api.get(f"/ui/watches/{created['id']}", allow_redirects=False)  # (the dashboard's)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert [(r["method"], r.get("watch_id")) for r in requests] == [
        ("POST", None),
        ("DELETE", created["id"]),
        ("GET", None),
        ("GET", created["id"]),
    ], requests
    assert all(r["tenant"] == "tenant-a" for r in requests[:3]), requests


def test_sampled_lines_say_how_many_were_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """One line of each event per period; the next one counts those left out."""
    clock = iter([0.0, 1.0, 2.0, 3.0, 11.0, 11.5])
    monkeypatch.setattr(logs.time, "monotonic", lambda: next(clock))
    sampled, said = logs.Sampled(10.0), []

    def emit(event: str, **fields: object) -> None:
        said.append((event, fields))

    for event in ("a", "a", "b", "a", "a", "a"):
        sampled.say(emit, event, video_id="v")
    assert said == [
        ("a", {"video_id": "v"}),
        ("b", {"video_id": "v"}),
        ("a", {"video_id": "v", "others": 2}),
    ]
