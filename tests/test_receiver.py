"""The webhook receiver over real HTTP on loopback (pytest-aiohttp's test server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from relay.devtools.receiver import ReceivedEvent, Receiver, create_app, format_event, main
from relay.domain.signing import generate_secret, secret_bytes, sign_headers

SECRET = generate_secret()
OTHER_SECRET = generate_secret()

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

CLIPS = [
    {
        "id": "clip_abc123",
        "title": "The moment Steve Jobs changed everything",
        "duration": 57,
        "score": 92,
        "status": "completed",
        "downloadUrl": "https://cdn.scalereach.ai/clips/clip_abc123.mp4?signature=" + "x" * 200,
    },
    {
        "id": "clip_def456",
        "title": "Second best",
        "duration": 31.5,
        "score": 84.5,
        "status": "ready",
        "downloadUrl": "https://cdn.scalereach.ai/clips/clip_def456.mp4?sig=short",
    },
]


def _event(watch: str = "wat_1", clips: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    chosen = CLIPS if clips is None else clips
    return {
        "type": "clips.ready",
        "timestamp": "2026-11-28T10:00:00Z",
        "data": {
            "watchId": watch,
            "videoId": "UThwmCZb75JYZi4UP9rOX",
            "minScore": 80,
            "clips": chosen,
            "count": len(chosen),
            "metadata": {},
        },
    }


def _signed(
    msg_id: str, body: bytes, secrets: tuple[str, ...] = (SECRET,), ts: int | None = None
) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return sign_headers([secret_bytes(s) for s in secrets], msg_id, stamp, body)


async def _deliver(
    client: TestClient[Any, Any],
    msg_id: str,
    path: str = "/hooks/a",
    event: dict[str, Any] | None = None,
    secrets: tuple[str, ...] = (SECRET,),
) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps(_event() if event is None else event)
    async with client.post(path, data=body, headers=_signed(msg_id, body, secrets)) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def _client(aiohttp_client: ClientFactory, receiver: Receiver) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(receiver))


async def test_signed_post_is_verified_and_recorded(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)
    before = time.time()

    status, _, body = await _deliver(client, "evt_1", path="/hooks/a")

    assert status == 204
    assert body == b""
    assert len(receiver.events) == 1
    ev = receiver.events[0]
    assert ev.webhook_id == "evt_1"
    assert ev.path == "/hooks/a"
    assert ev.event == _event()
    assert abs(ev.timestamp - before) < 5
    assert before <= ev.received_at <= time.time()
    assert ev.attempt_headers["webhook-id"] == "evt_1"
    assert ev.attempt_headers["webhook-signature"].startswith("v1,")
    assert ev.attempt_headers["content-type"] == "application/json"
    assert ev.status == 204
    assert receiver.unique_ids() == {"evt_1"}


async def test_bad_signature_is_400_said_and_not_recorded(aiohttp_client: ClientFactory) -> None:
    """A delivery that does not verify is answered 400, as the README tells receivers to
    (it was 401), and said to ``on_reject`` (the CLI prints it: it printed nothing)."""
    refused: list[tuple[str, str]] = []
    receiver = Receiver([SECRET], on_reject=lambda path, why: refused.append((path, why)))
    client = await _client(aiohttp_client, receiver)

    status, headers, body = await _deliver(client, "evt_bad", secrets=(OTHER_SECRET,))

    assert status == 400
    assert headers["Content-Type"].startswith("application/problem+json")
    problem = orjson.loads(body)
    assert problem["status"] == 400
    assert len(refused) == 1 and "no matching signature" in refused[0][1]
    assert receiver.rejected == 1
    assert "no matching signature" in problem["detail"]
    assert SECRET.removeprefix("whsec_") not in body.decode()
    assert receiver.events == []


async def test_tampered_old_or_unsigned_posts_are_refused(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)
    body = orjson.dumps(_event())

    tampered = body.replace(b"wat_1", b"wat_2")
    async with client.post("/h", data=tampered, headers=_signed("evt_t", body)) as resp:
        assert resp.status == 400
    old = _signed("evt_o", body, ts=int(time.time()) - 3600)
    async with client.post("/h", data=body, headers=old) as resp:
        assert resp.status == 400
        assert "too old" in (await resp.json(content_type=None))["detail"]
    async with client.post("/h", data=body) as resp:
        assert resp.status == 400
        assert "missing" in (await resp.json(content_type=None))["detail"]

    assert receiver.events == []


async def test_rotation_header_with_an_unknown_key_still_verifies(
    aiohttp_client: ClientFactory,
) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)

    status, _, _ = await _deliver(client, "evt_r", secrets=(OTHER_SECRET, SECRET))

    assert status == 204
    assert [e.webhook_id for e in receiver.events] == ["evt_r"]


async def test_signed_non_json_body_is_400_and_not_recorded(
    aiohttp_client: ClientFactory,
) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)
    for body in (b"not json", b"[1, 2]"):
        async with client.post("/h", data=body, headers=_signed("evt_x", body)) as resp:
            assert resp.status == 400
    assert receiver.events == []


async def test_script_500_500_200_then_default(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    receiver.script("/hooks/a", [500, 500, 200])
    client = await _client(aiohttp_client, receiver)

    statuses = [(await _deliver(client, "evt_s"))[0] for _ in range(4)]
    other = (await _deliver(client, "evt_other", path="/hooks/b"))[0]

    assert statuses == [500, 500, 200, 204]
    assert other == 204
    # Every verified delivery is recorded, whatever it was answered.
    assert [e.status for e in receiver.events] == [500, 500, 200, 204, 204]
    assert receiver.duplicates() == 3
    assert receiver.unique_ids() == {"evt_s", "evt_other"}


async def test_configured_default_status(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET], default_status=200)
    receiver.script("/gone", [410])
    client = await _client(aiohttp_client, receiver)

    assert (await _deliver(client, "evt_1", path="/gone"))[0] == 410
    assert (await _deliver(client, "evt_1", path="/gone"))[0] == 200


async def test_retry_after_on_429_and_503(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    receiver.script("/limited", [429], retry_after=7)
    receiver.script("/down", [503, 503], retry_after=0.5)
    receiver.script("/zero", [429], retry_after=0)
    client = await _client(aiohttp_client, receiver)

    status, headers, _ = await _deliver(client, "evt_1", path="/limited")
    assert (status, headers["Retry-After"]) == (429, "7")
    status, headers, _ = await _deliver(client, "evt_2", path="/down")
    assert (status, headers["Retry-After"]) == (503, "0.5")
    status, headers, _ = await _deliver(client, "evt_2", path="/down")
    assert (status, headers["Retry-After"]) == (503, "0.5")
    status, headers, _ = await _deliver(client, "evt_2", path="/down")
    assert status == 204
    assert "Retry-After" not in headers
    status, headers, _ = await _deliver(client, "evt_3", path="/zero")
    assert (status, headers["Retry-After"]) == (429, "0")


async def test_script_delay(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    receiver.script("/slow", [200], delay=0.3)
    client = await _client(aiohttp_client, receiver)

    started = time.monotonic()
    status, _, _ = await _deliver(client, "evt_1", path="/slow")
    assert status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await _deliver(client, "evt_1", path="/slow")
    assert time.monotonic() - started < 0.3


def test_script_rejects_bad_values() -> None:
    receiver = Receiver()
    for kwargs in ({"codes": [99]}, {"codes": [200], "delay": -1}, {"codes": [700]}):
        with pytest.raises(ValueError, match=r"status|delay"):
            receiver.script("/x", **kwargs)
    with pytest.raises(ValueError, match="path"):
        receiver.script("x", [200])
    with pytest.raises(ValueError, match="whsec_"):
        Receiver(["not-a-secret"])


async def test_duplicates_are_counted(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)

    for msg_id in ("evt_1", "evt_2", "evt_1", "evt_1", "evt_3"):
        assert (await _deliver(client, msg_id))[0] == 204

    assert len(receiver.events) == 5
    assert receiver.unique_ids() == {"evt_1", "evt_2", "evt_3"}
    assert receiver.duplicates() == 2
    assert [e.webhook_id for e in receiver.events] == ["evt_1", "evt_2", "evt_1", "evt_1", "evt_3"]


async def test_wait_for(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)

    waiting = asyncio.create_task(receiver.wait_for(2, timeout=5))
    await _deliver(client, "evt_1")
    await _deliver(client, "evt_1")  # a duplicate does not count
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await _deliver(client, "evt_2")
    await asyncio.wait_for(waiting, 1)

    await receiver.wait_for(1, timeout=0.01)  # already there: returns at once
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 3"):
        await receiver.wait_for(3, timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2


async def test_events_endpoint_and_reset(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)
    await _deliver(client, "evt_1", path="/hooks/a")
    await _deliver(client, "evt_1", path="/hooks/a")
    await _deliver(client, "evt_2", path="/hooks/b")

    async with client.get("/_events") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["unique"] == 2
    assert data["duplicates"] == 1
    assert [e["webhookId"] for e in data["events"]] == ["evt_1", "evt_1", "evt_2"]
    first = data["events"][0]
    assert first["path"] == "/hooks/a"
    assert first["event"] == _event()
    assert first["status"] == 204
    assert first["attemptHeaders"]["webhook-id"] == "evt_1"
    assert isinstance(first["timestamp"], int)
    assert isinstance(first["receivedAt"], float)

    # Events already read as objects and events not read yet are listed the same way.
    assert [e.webhook_id for e in receiver.events] == ["evt_1", "evt_1", "evt_2"]
    await _deliver(client, "evt_3", path="/hooks/c")
    async with client.get("/_events") as resp:
        again = await resp.json()
    assert again["events"][:3] == data["events"]
    assert again["events"][3]["event"] == _event()
    assert again["events"][3]["path"] == "/hooks/c"
    assert (again["unique"], again["duplicates"]) == (3, 1)
    assert receiver.events[3].webhook_id == "evt_3"
    assert receiver.received() == 4

    async with client.delete("/_events") as resp:
        assert resp.status == 204
    assert receiver.events == []
    assert receiver.unique_ids() == set()


async def test_script_endpoint(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver([SECRET])
    client = await _client(aiohttp_client, receiver)
    script = {"path": "/hooks/a", "codes": [503, 200], "delay": 0, "retryAfter": 2}
    async with client.post("/_script", json=script) as resp:
        assert resp.status == 204

    status, headers, _ = await _deliver(client, "evt_1", path="/hooks/a")
    assert (status, headers["Retry-After"]) == (503, "2")
    assert (await _deliver(client, "evt_1", path="/hooks/a"))[0] == 200
    assert (await _deliver(client, "evt_1", path="/hooks/a"))[0] == 204

    for bad in (
        {"path": "/x", "codes": "500"},
        {"path": "/x", "codes": [42]},
        {"codes": [500]},
        {"path": "/x", "codes": [500], "delay": "soon"},
        {"path": "/x", "codes": [500], "retryAfter": "later"},
    ):
        async with client.post("/_script", json=bad) as resp:
            assert resp.status == 400, bad
            assert resp.content_type == "application/problem+json"
    async with client.post("/_script", data=b"{") as resp:
        assert resp.status == 400


async def test_secrets_endpoint(aiohttp_client: ClientFactory) -> None:
    receiver = Receiver()  # no secret yet: every delivery is refused
    client = await _client(aiohttp_client, receiver)
    assert (await _deliver(client, "evt_1"))[0] == 400

    async with client.post("/_secrets", json={"secret": SECRET}) as resp:
        assert resp.status == 204
    assert (await _deliver(client, "evt_1"))[0] == 204

    bad = "whsec_short-but-secret"
    async with client.post("/_secrets", json={"secret": bad}) as resp:
        assert resp.status == 400
        text = await resp.text()
    assert "short-but-secret" not in text
    async with client.post("/_secrets", json={"nope": 1}) as resp:
        assert resp.status == 400
    assert [e.webhook_id for e in receiver.events] == ["evt_1"]


async def test_without_verification_unsigned_posts_are_recorded(
    aiohttp_client: ClientFactory,
) -> None:
    receiver = Receiver(verify_signatures=False)
    client = await _client(aiohttp_client, receiver)
    body = orjson.dumps(_event())
    async with client.post("/plain", data=body) as resp:
        assert resp.status == 204
    async with client.post("/plain", data=body, headers={"webhook-id": "evt_9"}) as resp:
        assert resp.status == 204
    ids = [e.webhook_id for e in receiver.events]
    assert ids[1] == "evt_9"
    assert ids[0] != "evt_9"


async def test_printer_gets_each_recorded_event(aiohttp_client: ClientFactory) -> None:
    printed: list[ReceivedEvent] = []
    receiver = Receiver([SECRET], printer=printed.append)
    receiver.script("/hooks/a", [500])
    client = await _client(aiohttp_client, receiver)
    await _deliver(client, "evt_1")
    await _deliver(client, "evt_bad", secrets=(OTHER_SECRET,))
    await _deliver(client, "evt_2")
    assert [(e.webhook_id, e.status) for e in printed] == [("evt_1", 500), ("evt_2", 204)]
    assert printed[0].event == _event()
    assert receiver.events == printed


def test_format_event_lists_the_clips() -> None:
    ev = ReceivedEvent(
        webhook_id="evt_fmt",
        timestamp=1_800_000_000,
        path="/hooks/a",
        event=_event(watch="wat_fmt"),
        received_at=1_800_000_000.5,
        attempt_headers={},
    )
    text = format_event(ev)
    lines = text.splitlines()

    assert "clips.ready" in lines[0]
    assert "evt_fmt" in lines[0]
    assert "wat_fmt" in text
    assert "UThwmCZb75JYZi4UP9rOX" in text
    assert "count=2" in text
    clip_lines = [line for line in lines if "score" in line]
    assert len(clip_lines) == 2
    first, second = clip_lines
    assert "92" in first
    assert "The moment Steve Jobs changed everything" in first
    assert "57s" in first
    url = str(CLIPS[0]["downloadUrl"])
    assert url[:60] in first
    assert url[:61] not in first
    assert "84.5" in second
    assert "Second best" in second
    assert "31.5s" in second
    assert str(CLIPS[1]["downloadUrl"]) in second


def test_format_event_for_a_failed_video_and_odd_payloads() -> None:
    failed = {
        "type": "video.failed",
        "data": {
            "watchId": "wat_2",
            "videoId": "v2",
            "videoStatus": "not_found",
            "error": "video not found",
            "metadata": {},
        },
    }
    ev = ReceivedEvent("evt_f", 1, "/h", failed, 1.0, {})
    text = format_event(ev)
    assert "video.failed" in text
    assert "not_found" in text
    assert "video not found" in text

    odd = ReceivedEvent("evt_o", 1, "/h", {"data": {"clips": [None, {"title": None}]}}, 1.0, {})
    assert "evt_o" in format_event(odd)


def test_main_refuses_a_malformed_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--secret", "whsec_tooShortSecretValue"]) == 2
    err = capsys.readouterr().err
    assert "webhook secret" in err
    assert "tooShortSecretValue" not in err
