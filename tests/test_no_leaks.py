"""No secret leaks: a whole stack of real processes, known secret values, failing paths.

``relay.devtools.stack.spawn`` starts the simulator, a receiver, two APIs (JSON and console
logs), and
a worker on one real Redis-protocol server. Secrets in play: the upstream key, two tenant
API keys, the Fernet key of RELAY_SECRETS_KEY, a webhook secret given at registration, a
generated one, a rotated one, and secrets sent in requests that are refused. The flow takes
failing paths too: the upstream answering 401, bad API keys, validation errors, a receiver
answering 500 then 200, a giant Authorization header, an API 500. Afterwards no secret may
be in any process's log, in any error answer, or in plain in Redis, and nothing in Redis
may be pickled.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis as redis_sync
from cryptography.fernet import Fernet

from relay.devtools.embedded_redis import RedisServer, free_port
from relay.devtools.stack import Proc, relay_env, spawn, wait_http
from relay.domain.signing import generate_secret, verify

CALLBACK_PATH = "/hooks/one"


class ProductBug(AssertionError):
    """The product behaved wrongly (what an xfail here is about, not a broken set-up)."""


@dataclass
class Secrets:
    """Every secret value of the run."""

    upstream: str = field(default_factory=lambda: "sr_live_" + secrets.token_hex(24))
    key_a: str = field(default_factory=lambda: "ka" + secrets.token_hex(20))
    key_b: str = field(default_factory=lambda: "kb" + secrets.token_hex(20))
    fernet: str = field(default_factory=lambda: Fernet.generate_key().decode())
    given: str = field(default_factory=generate_secret)
    refused: str = field(default_factory=generate_secret)
    crash: str = field(default_factory=generate_secret)
    generated: str = ""
    rotated: str = ""

    def webhook(self) -> list[str]:
        return [self.given, self.refused, self.crash, self.generated, self.rotated]

    def all(self) -> dict[str, str]:
        values = {
            "SCALEREACH_API_KEY": self.upstream,
            "api key a": self.key_a,
            "api key b": self.key_b,
            "RELAY_SECRETS_KEY": self.fernet,
        }
        for n, s in enumerate(self.webhook()):
            assert s.startswith("whsec_")
            values[f"webhook secret {n}"] = s
            values[f"webhook secret {n} (key part)"] = s[len("whsec_") :]
        return values


@dataclass
class Run:
    """What the flow produced, for the tests to judge."""

    secrets: Secrets
    redis_url: str
    logs: dict[str, str]
    errors: list[tuple[str, int, str]]  # (what, status, headers + body) of every 4xx/5xx
    statuses: dict[str, int]
    watches: dict[str, dict[str, Any]]
    deliveries: list[dict[str, Any]]
    events: list[dict[str, Any]]
    log_lines_around_bad_request_id: tuple[int, int]


async def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout=10)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]), data


def _request(method: str, path: str, headers: list[bytes], payload: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if method == "POST":
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(payload)]
    return b"\r\n".join(lines + headers) + b"\r\n\r\n" + payload


def _request_lines(log: Path) -> int:
    return log.read_text(errors="replace").count('"event":"request"')


async def _flow(s: Secrets, ports: dict[str, int], procs: dict[str, Proc]) -> dict[str, Any]:
    sim = f"http://127.0.0.1:{ports['sim']}"
    api = f"http://127.0.0.1:{ports['api']}"
    api2 = f"http://127.0.0.1:{ports['api2']}"
    rcv = f"http://127.0.0.1:{ports['receiver']}"
    a = {"Authorization": f"Bearer {s.key_a}"}
    b = {"Authorization": f"Bearer {s.key_b}"}
    errors: list[tuple[str, int, str]] = []
    statuses: dict[str, int] = {}

    async with aiohttp.ClientSession() as http:

        async def call(what: str, method: str, url: str, **kw: Any) -> Any:
            async with http.request(method, url, **kw) as resp:
                text = await resp.text()
                statuses[what] = resp.status
                if resp.status >= 400:
                    errors.append((what, resp.status, f"{dict(resp.headers)} {text}"))
                return orjson.loads(text) if text else None

        timeline = [
            {"status": "analyzing", "progress": 40, "after": 0},
            {"status": "completed", "progress": 100, "after": 1.0},
        ]
        v1 = (await call("sim video", "POST", f"{sim}/_sim/videos", json={"timeline": timeline}))[
            "id"
        ]
        forever = [{"status": "analyzing", "progress": 10, "after": 0}]
        v2 = (await call("sim video 2", "POST", f"{sim}/_sim/videos", json={"timeline": forever}))[
            "id"
        ]
        fault = {"kind": "401", "path": "status", "videoId": v1, "times": 2}
        await call("sim fault", "POST", f"{sim}/_sim/faults", json=fault)
        await call(
            "script", "POST", f"{rcv}/_script", json={"path": CALLBACK_PATH, "codes": [500, 200]}
        )

        # registrations: a given secret (then rotated) for tenant A, a generated one for B
        w1 = await call(
            "create w1",
            "POST",
            f"{api}/v1/watches",
            json={"videoId": v1, "callbackUrl": rcv + CALLBACK_PATH, "secret": s.given},
            headers={**a, "Idempotency-Key": "leak-1"},
        )
        await call("receiver secret", "POST", f"{rcv}/_secrets", json={"secret": s.given})
        rotated = await call(
            "rotate w1", "POST", f"{api}/v1/watches/{w1['id']}/rotate-secret", headers=a
        )
        s.rotated = rotated["secret"]
        await call("receiver secret", "POST", f"{rcv}/_secrets", json={"secret": s.rotated})
        w2 = await call(
            "create w2",
            "POST",
            f"{api2}/v1/watches",
            json={"videoId": v2, "callbackUrl": rcv + "/hooks/two"},
            headers=b,
        )
        s.generated = w2["secret"]
        await call("receiver secret", "POST", f"{rcv}/_secrets", json={"secret": s.generated})

        # failing paths, on both APIs
        for base in (api, api2):
            for name, token in (
                ("last char", s.key_a[:-1] + ("x" if s.key_a[-1] != "x" else "y")),
                ("first char", ("x" if s.key_a[0] != "x" else "y") + s.key_a[1:]),
                ("prefix", s.key_a[:-1]),
                ("upstream key", s.upstream),
                ("fernet key", s.fernet),
                ("webhook secret", s.given),
            ):
                await call(
                    f"bad key {name}",
                    "GET",
                    f"{base}/v1/watches",
                    headers={"Authorization": f"Bearer {token}"},
                )
            refused = [
                {"videoId": v1, "callbackUrl": "http://10.0.0.1/x", "secret": s.refused},
                {"videoId": v1, "callbackUrl": rcv, "secret": s.refused, "minScore": "high"},
                {"videoId": "bad id!", "callbackUrl": rcv, "secret": s.refused},
                {"videoId": v1, "callbackUrl": rcv, "secret": s.refused + "=="},
                {"videoId": v1, "callbackUrl": rcv, "secret": s.refused[:20]},
                {"videoId": v1, "callbackUrl": rcv, "secret": s.refused, "extra": s.refused},
                {"videoId": v1, "callbackUrl": rcv, "secret": s.refused, "metadata": [s.refused]},
            ]
            for n, payload in enumerate(refused):
                await call(f"refused {n}", "POST", f"{base}/v1/watches", json=payload, headers=a)
            once = {"videoId": v1, "callbackUrl": rcv, "secret": s.refused}
            duplicate = orjson.dumps(once)[:-1] + b',"secret":"' + s.refused.encode() + b'"}'
            await call(
                "duplicate secret",
                "POST",
                f"{base}/v1/watches",
                data=duplicate,
                headers={**a, "Content-Type": "application/json"},
            )
            await call(
                "same idempotency key, other body",
                "POST",
                f"{base}/v1/watches",
                json={"videoId": v1, "callbackUrl": rcv, "secret": s.refused},
                headers={**a, "Idempotency-Key": "leak-1"},
            )
            await call("key in query", "GET", f"{base}/v1/watches?apiKey={s.key_a}", headers=a)
            await call("secret as id", "GET", f"{base}/v1/watches/{s.given}", headers=a)
            await call("other tenant", "GET", f"{base}/v1/watches/{w1['id']}", headers=b)
            port = int(base.rsplit(":", 1)[1])
            # an API 500 (or, once fixed, a 4xx) while the body carries a webhook secret
            crash_body = orjson.dumps({"videoId": v1, "callbackUrl": rcv, "secret": s.crash})
            status, data = await _raw(
                port,
                _request(
                    "POST",
                    "/v1/watches",
                    [f"Authorization: Bearer {s.key_a}".encode(), b"Idempotency-Key: \xff\xfe"],
                    crash_body,
                ),
            )
            statuses["bad idempotency key"] = status
            errors.append(("bad idempotency key", status, data.decode(errors="replace")))
            # a header line over aiohttp's limit, starting with a real key
            status, data = await _raw(
                port,
                _request(
                    "GET",
                    "/v1/watches",
                    [f"Authorization: Bearer {s.key_a}".encode() + b" " * 9000 + b"x"],
                ),
            )
            statuses["giant authorization"] = status
            errors.append(("giant authorization", status, data.decode(errors="replace")))

        # a request id that is not UTF-8: the request must still leave its log line
        before = _request_lines(procs["api"].log_path)
        status, _ = await _raw(
            ports["api"],
            _request(
                "GET",
                "/v1/watches",
                [f"Authorization: Bearer {s.key_b}".encode(), b"X-Request-Id: \xff\xfe"],
            ),
        )
        statuses["bad request id"] = status
        settle_by = time.monotonic() + 5  # (its line is written after the answer: wait for it)
        while _request_lines(procs["api"].log_path) <= before and time.monotonic() < settle_by:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # (and a second line, were there one)
        after = _request_lines(procs["api"].log_path)

        # wait for both final events (W1: clips.ready after 401s and a 500; W2: expired)
        watches: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            got1 = await call("poll w1", "GET", f"{api}/v1/watches/{w1['id']}", headers=a)
            got2 = await call("poll w2", "GET", f"{api2}/v1/watches/{w2['id']}", headers=b)
            watches = {"w1": got1, "w2": got2}
            if got1["status"] == "delivered" and got2["status"] == "delivered":
                break
            await asyncio.sleep(0.1)
        deliveries = await call(
            "deliveries", "GET", f"{api}/v1/watches/{w1['id']}/deliveries", headers=a
        )
        events = await call("events", "GET", f"{rcv}/_events")
    return {
        "errors": errors,
        "statuses": statuses,
        "watches": watches,
        "deliveries": deliveries["data"],
        "events": events["events"],
        "log_lines": (before, after),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Start the stack, run the flow, stop every process (so logs are complete)."""
    logs_dir = tmp_path_factory.mktemp("no-leaks")
    s = Secrets()
    redis = RedisServer.start()
    ports = {name: free_port() for name in ("sim", "receiver", "api", "api2", "metrics")}
    procs: dict[str, Proc] = {}
    try:
        procs["sim"] = spawn(
            "upstream-sim",
            ["upstream-sim", "--port", str(ports["sim"])],
            {"SCALEREACH_API_KEY": s.upstream},
            logs_dir,
        )
        procs["receiver"] = spawn(
            "receiver", ["receiver", "--port", str(ports["receiver"])], {}, logs_dir
        )
        extra = {
            "RELAY_SECRETS_KEY": s.fernet,
            "RELAY_POLL_INTERVAL": "0.2",
            "RELAY_RETRY_SCHEDULE": "0.3,0.3,0.3",
            "RELAY_WATCH_TIMEOUT": "4",
            "RELAY_RATE_LIMIT": "1000",
            "RELAY_SHUTDOWN_GRACE": "2",
        }
        sim_url = f"http://127.0.0.1:{ports['sim']}"

        def env(port: int, log_format: str) -> dict[str, str]:
            return relay_env(
                redis.url,
                sim_url,
                api_keys=f"tenant-a:{s.key_a},tenant-b:{s.key_b}",
                upstream_key=s.upstream,
                port=port,
                metrics_port=ports["metrics"],
                extra={**extra, "LOG_FORMAT": log_format},
            )

        procs["api"] = spawn("api", ["api"], env(ports["api"], "json"), logs_dir)
        procs["api2"] = spawn("api-console", ["api"], env(ports["api2"], "console"), logs_dir)
        procs["worker"] = spawn("worker", ["worker"], env(ports["api"], "json"), logs_dir)
        wait_http(f"{sim_url}/_sim/stats", 20, procs["sim"])
        wait_http(f"http://127.0.0.1:{ports['receiver']}/_events", 20, procs["receiver"])
        wait_http(f"http://127.0.0.1:{ports['api']}/healthz", 20, procs["api"])
        wait_http(f"http://127.0.0.1:{ports['api2']}/healthz", 20, procs["api2"])
        wait_http(f"http://127.0.0.1:{ports['metrics']}/readyz", 20, procs["worker"])
        out = asyncio.run(_flow(s, ports, procs))
        for proc in procs.values():
            proc.signal(signal.SIGTERM)
        for proc in procs.values():
            proc.stop(timeout=15)
        yield Run(
            secrets=s,
            redis_url=redis.url,
            logs={name: p.log_text() for name, p in procs.items()},
            errors=out["errors"],
            statuses=out["statuses"],
            watches=out["watches"],
            deliveries=out["deliveries"],
            events=out["events"],
            log_lines_around_bad_request_id=out["log_lines"],
        )
    finally:
        for proc in procs.values():
            if proc.alive():
                proc.kill()
        redis.stop()


# --- the flow did what it should (so the checks below judge a real run) -----------------------


def test_flow_took_the_failing_paths(run: Run) -> None:
    st = run.statuses
    for name in (
        "last char",
        "first char",
        "prefix",
        "upstream key",
        "fernet key",
        "webhook secret",
    ):
        assert st[f"bad key {name}"] == 401
    assert all(st[f"refused {n}"] == 422 for n in range(7)), st
    assert st["duplicate secret"] == 400
    assert st["same idempotency key, other body"] == 409
    assert st["secret as id"] == st["other tenant"] == 404
    assert 400 <= st["giant authorization"] < 500
    assert "upstream refused the API key" in run.logs["worker"]  # the 401 path was taken
    attempts = [(d["attempt"], d["statusCode"]) for d in run.deliveries]
    assert attempts[:2] == [(1, 500), (2, 200)], run.deliveries


def test_deliveries_verify_with_given_and_rotated_secrets(run: Run) -> None:
    w1, w2 = run.watches["w1"], run.watches["w2"]
    assert (w1["status"], w1["lastEventType"]) == ("delivered", "clips.ready")
    assert (w2["status"], w2["lastEventType"]) == ("delivered", "watch.expired")
    by_watch = {e["event"]["data"]["watchId"]: e for e in run.events}
    assert set(by_watch) == {w1["id"], w2["id"]}
    # the receiver process recorded only deliveries that verified; check both signatures
    last = by_watch[w1["id"]]
    raw, headers = orjson.dumps(last["event"]), last["attemptHeaders"]
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(raw, headers, run.secrets.given)["data"]["watchId"] == w1["id"]
    assert verify(raw, headers, run.secrets.rotated)["data"]["watchId"] == w1["id"]
    expired = by_watch[w2["id"]]
    raw, headers = orjson.dumps(expired["event"]), expired["attemptHeaders"]
    assert verify(raw, headers, run.secrets.generated)["type"] == "watch.expired"


# --- no leaks ---------------------------------------------------------------------------------


def test_no_secret_in_any_log(run: Run) -> None:
    assert set(run.logs) == {"sim", "receiver", "api", "api2", "worker"}
    for proc, text in run.logs.items():
        assert text.strip(), f"{proc} logged nothing"
        for what, value in run.secrets.all().items():
            assert value not in text, f"{what} is in the log of {proc}"


def test_no_secret_in_any_error_answer(run: Run) -> None:
    assert len(run.errors) > 30
    for where, status, text in run.errors:
        if where == "giant authorization":
            continue  # aiohttp's own answer, judged by the next test
        for what, value in run.secrets.all().items():
            assert value not in text, f"{what} is in the {status} answer to {where!r}"


def test_giant_authorization_header_is_not_echoed(run: Run) -> None:
    answers = [t for w, _, t in run.errors if w == "giant authorization"]
    assert len(answers) == 2, "precondition: both APIs were sent the header"
    for text in answers:
        if run.secrets.key_a[:8] in text:
            raise ProductBug(text[:300])


def test_every_request_leaves_a_log_line(run: Run) -> None:
    before, after = run.log_lines_around_bad_request_id
    assert before > 10, "precondition: the JSON API logs its requests"
    status = run.statuses["bad request id"]
    if status != 200 or after != before + 1 or "Logging error" in run.logs["api"]:
        raise ProductBug(f"answer {status}, request lines {before} -> {after}")


# --- Redis ------------------------------------------------------------------------------------


def _every_value(client: Any) -> Iterator[tuple[bytes, bytes]]:
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"hash":
            h = client.hgetall(key)
            values = [*h.keys(), *h.values()]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            values = [orjson.dumps(client.xrange(key), default=bytes.hex)]
        elif kind == b"none":  # (expired since the scan: a rate counter's second)
            continue
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        for value in values:
            yield key, value


def test_nothing_in_redis_is_pickled(run: Run) -> None:
    client: Any = redis_sync.Redis.from_url(run.redis_url)
    try:
        # (the relay queues no arq jobs any more -- expiries are a schedule of their own --
        # but a job a previous version queued, or arq's own keys, must be JSON all the same)
        for key, value in _every_value(client):
            assert not value.startswith(b"\x80"), f"{key!r} holds a pickle"
            if key.startswith((b"arq:job:", b"arq:result:")):
                try:
                    orjson.loads(value)  # arq payloads are JSON
                except orjson.JSONDecodeError:
                    raise AssertionError(f"{key!r} is not JSON: {value[:80]!r}") from None
    finally:
        client.close()


def test_no_secret_in_plain_in_redis(run: Run) -> None:
    client: Any = redis_sync.Redis.from_url(run.redis_url)
    try:
        found = list(_every_value(client))
        watches = [k for k, _ in found if k.startswith(b"cr:w:") and k.count(b":") == 2]
        assert len(set(watches)) == 2
        for key in set(watches):
            sealed = orjson.loads(client.hget(key, "secrets") or b"[]")
            assert sealed and all(entry[0].startswith("enc:") for entry in sealed), sealed
    finally:
        client.close()
    needles = {what: value.encode() for what, value in run.secrets.all().items()}
    needles["whsec_ prefix"] = b"whsec_"
    for what, value in list(needles.items()):
        if what.endswith("(key part)"):
            # the key bytes themselves, in any of the usual encodings
            raw = base64.b64decode(value + b"=" * (-len(value) % 4))
            needles[what + " urlsafe"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
            needles[what + " hex"] = raw.hex().encode()
    for key, value in [*found, *((k, k) for k, _ in found)]:
        for what, needle in needles.items():
            assert needle not in value, f"{what} is in plain in Redis under {key!r}"


def test_a_watch_printed_shows_no_callback_credentials() -> None:
    """Rule: ``repr`` of a watch (what a log line or a traceback's locals would show) has
    neither its secrets nor its callback URL, which may carry a password or a token. Fails
    before: the callback URL was in the repr (a security review, 2026-12-06)."""
    from relay.domain.watch import SecretEntry, Watch

    url = "https://user:hunter2-pw@receiver.example/hook?token=t0ken-abc"
    w = Watch(id="w", tenant="t", video_id="v", callback_url=url, secrets=[SecretEntry("s3")])
    shown = repr(w)
    assert "hunter2-pw" not in shown and "t0ken-abc" not in shown and "'s3'" not in shown
