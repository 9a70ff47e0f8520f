"""Rotating RELAY_SECRETS_KEY: several keys, newest first -- the newest seals, any opens --
and ``clip-relay secrets status|reseal`` (:mod:`relay.admin.secrets`,
:class:`relay.store.reseal.Resealer`) writing every stored secret anew with the newest key,
on a real valkey-server, with a real API, worker and receiver.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from relay import constants as c
from relay.admin import running
from relay.admin import secrets as secrets_cli
from relay.devtools.embedded_redis import RedisServer
from relay.domain.crypto import SEALED_PREFIX, SecretBox, fingerprint
from relay.domain.signing import verify
from relay.settings import ConfigError, Settings, load
from relay.store import scripts
from relay.store.reseal import BATCH, Resealer, Tally, keys_seen
from tests.conftest import TENANT_B_KEY, ApiFactory, WorkerFactory, auth
from tests.test_secrets_at_rest import (
    Client,
    Rec,
    _everything,
    _sim_video,
    _stored_secrets,
    _wait_final,
)

OLD, NEW, LOST = (Fernet.generate_key().decode() for _ in range(3))


@pytest.fixture(autouse=True)
def rolled_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command runs as if every API and worker held the newest key (the rollout before
    a reseal done): the tests start processes with one key or another to store values
    sealed with it, and keep them running. The rule itself has its own test."""

    async def every_one_has_it(redis: Redis) -> list[list[str]]:
        return []

    monkeypatch.setattr(secrets_cli, "keys_seen", every_one_has_it)


# --- several keys -------------------------------------------------------------------------


def test_the_newest_key_seals_and_every_key_opens() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    by_old = SecretBox(OLD).seal(secret)
    both = SecretBox(f"{NEW},{OLD}")
    assert both.open(by_old) == secret
    by_new = both.seal(secret)
    assert SecretBox(NEW).open(by_new) == secret  # sealed with the first key
    with pytest.raises(ValueError, match="RELAY_SECRETS_KEY"):
        SecretBox(OLD).open(by_new)
    assert both.current(by_new) and not both.current(by_old) and not both.current(secret)
    assert both.current("")  # nothing stored: nothing to seal
    assert SecretBox(NEW).open(both.reseal(by_old)) == secret
    assert SecretBox(NEW).open(both.reseal(secret)) == secret  # a plain one sealed
    assert SecretBox("").current(secret) and not SecretBox("").current(by_new)
    with pytest.raises(ValueError, match="RELAY_SECRETS_KEY"):
        SecretBox(NEW).reseal(SecretBox(LOST).seal(secret))


def test_the_setting_takes_keys_newest_first_and_names_a_bad_one_by_position() -> None:
    assert load({"RELAY_SECRETS_KEY": f" {NEW} , {OLD}"}).secrets_key == f"{NEW},{OLD}"
    for raw, words in (
        (f"{NEW},{OLD[:-3]}", "key 2 of 2: expected a Fernet key"),
        (f"{NEW},,{OLD}", "key 2 of 3: empty"),
        (f"{NEW},", "key 2 of 2: empty"),
        (f"{NEW},{NEW}", "key 2 of 2: the same key as key 1"),  # (a typo for NEW,OLD)
        (f"{NEW},{OLD}, {NEW}", "key 3 of 3: the same key as key 1"),
    ):
        with pytest.raises(ConfigError) as info:
            load({"RELAY_SECRETS_KEY": raw})
        message = str(info.value)
        assert message.startswith("RELAY_SECRETS_KEY") and words in message, message
        assert NEW not in message and OLD[:-3] not in message


# --- through the API, the store and a worker ------------------------------------------------


async def _cli(action: str, settings: Callable[[], Settings]) -> int:
    """``clip-relay secrets ACTION`` (its own event loop, as from a shell)."""
    return await asyncio.to_thread(secrets_cli.main, [action], settings)


async def _register(api: Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = await api.post("/v1/watches", json=body, headers=auth())
    assert resp.status == 201, await resp.text()
    made: dict[str, Any] = await resp.json()
    return made


async def test_reseal_moves_every_stored_secret_to_the_newest_key(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: Rec,
    redis: Redis,
    redis_server: RedisServer,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rule: with ``NEW,OLD`` the relay runs on (old values open, new ones are sealed with
    NEW); ``reseal`` writes every webhook secret and callback credential anew with NEW --
    plain ones from before any key too, a credential still in a callback URL taken out and
    sealed apart -- touching nothing else of a watch; afterwards NEW alone opens all of
    them, and a worker holding only NEW signs and authenticates with them."""
    rec, base = receiver
    host = base.removeprefix("http://")
    vid = await _sim_video(sim, complete_after=1.5)
    plain = await _register(
        await make_api(), {"videoId": vid, "callbackUrl": f"http://tok-PLAIN-2@{host}/plain"}
    )
    assert plain["callbackUrl"] == f"http://***@{host}/plain"
    stored_url = orjson.loads(await redis.get(f"cr:w:{plain['id']}:r"))["callbackUrl"]
    assert "tok-PLAIN-2" in stored_url  # (no key at its registration: in the URL, plain)
    api = await make_api(secrets_key=OLD)
    cred = await _register(
        api, {"videoId": vid, "callbackUrl": f"http://hook:pw-ROTATE-1@{host}/cred"}
    )
    rotated = await api.post(f"/v1/watches/{cred['id']}/rotate-secret", headers=auth())
    cred_secrets = [cred["secret"], (await rotated.json())["secret"]]
    api = await make_api(secrets_key=f"{NEW},{OLD}")
    fresh = await _register(api, {"videoId": vid, "callbackUrl": base + "/fresh"})
    ids = [plain["id"], cred["id"], fresh["id"]]
    regs = {w: await redis.get(f"cr:w:{w}:r") for w in ids}
    states = {w: await redis.hgetall(f"cr:w:{w}") for w in ids}  # type: ignore[misc]

    both = settings.model_copy(update={"secrets_key": f"{NEW},{OLD}"})
    assert await _cli("status", lambda: both) == 3
    out = capsys.readouterr().out
    # plain: 1 secret + its URL's credential; cred: 2 secrets + its credential (OLD); fresh:
    # 1 secret (NEW)
    assert (
        f"3 watches in {redis_server.url}; their stored secrets: 1 sealed with the newest key"
        in out
    )
    assert ", 3 with an older one, 2 plain, 0 that no key opens (2 keys in" in out, out
    assert f"the newest {fingerprint(NEW)})" in out
    assert "secrets reseal" in out and NEW not in out and OLD not in out

    assert await _cli("reseal", lambda: both) == 0
    out = capsys.readouterr().out
    assert "sealed anew with the newest key: 5" in out, out
    assert await _cli("status", lambda: both) == 0
    assert "older keys can be dropped" in capsys.readouterr().out
    assert await _cli("reseal", lambda: both) == 0  # again: nothing to do
    assert "sealed anew with the newest key: 0" in capsys.readouterr().out

    alone = SecretBox(NEW)
    for w, made in zip(ids, (plain, cred, fresh), strict=True):
        stored = [sealed for sealed, _ in await _stored_secrets(redis, w)]
        assert all(s.startswith(SEALED_PREFIX) for s in stored)
        opened = [alone.open(s) for s in stored]
        assert opened == (
            [cred_secrets[1], cred_secrets[0]] if w == cred["id"] else [made["secret"]]
        )
        state = await redis.hgetall(f"cr:w:{w}")  # type: ignore[misc]
        assert {k: v for k, v in state.items() if k != "secrets"} == {
            k: v for k, v in states[w].items() if k != "secrets"
        }
        was, now = orjson.loads(regs[w]), orjson.loads(await redis.get(f"cr:w:{w}:r"))
        if w == cred["id"]:
            assert alone.open(now.pop("callbackAuth")) == "hook:pw-ROTATE-1"
            was.pop("callbackAuth")
        if w == plain["id"]:  # taken out of the URL, sealed apart, as a key would have
            assert alone.open(now.pop("callbackAuth")) == "tok-PLAIN-2"
            assert now.pop("callbackUrl") == f"http://***@{host}/plain"
            was.pop("callbackUrl")
        assert now == was
    for key, value in await _everything(redis):
        assert "ROTATE" not in value and "PLAIN" not in value and "whsec_" not in value, key

    await make_worker(secrets_key=NEW)  # the old key is gone
    api = await make_api(secrets_key=NEW)
    for made in (plain, cred, fresh):
        rec.add_secret(made["secret"] if made is not cred else cred_secrets[1])
    for w in ids:
        assert (await _wait_final(api, w))["status"] == "delivered"
    by_path = {e.path.rsplit("/", 1)[-1]: e for e in rec.events}
    assert sorted(by_path) == ["cred", "fresh", "plain"]
    assert by_path["plain"].attempt_headers["authorization"] == (
        "Basic " + base64.b64encode(b"tok-PLAIN-2:").decode()
    )
    sent = by_path["cred"]
    assert (
        sent.attempt_headers["authorization"]
        == "Basic " + base64.b64encode(b"hook:pw-ROTATE-1").decode()
    )
    raw = orjson.dumps(sent.event)
    assert verify(raw, sent.attempt_headers, cred_secrets[1])["data"]["watchId"] == cred["id"]


async def test_a_reseal_waits_until_every_process_holds_the_newest_key(
    make_api: ApiFactory,
    redis: Redis,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rule: a reseal refuses (exit 3, nothing written) while an API or worker seen in the
    last minute lacks the newest key -- it could not open what the reseal seals; a status
    says so too. Each process says what it holds (fingerprints) as it starts and every few
    seconds. Fails before: a reseal with the pods still on the old key (or none) sealed
    every value with a key they lacked, and every delivery failed (a new user's run,
    2026-12-07)."""
    monkeypatch.setattr(secrets_cli, "keys_seen", keys_seen)  # (the real one, here)
    old_api = await make_api(secrets_key=OLD)
    made = await _register(old_api, {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/k"})
    before = await _stored_secrets(redis, made["id"])
    both = settings.model_copy(update={"secrets_key": f"{NEW},{OLD}"})
    assert await _cli("reseal", lambda: both) == 3
    out = capsys.readouterr().out
    assert "not resealed" in out and f"lack the newest key {fingerprint(NEW)}" in out, out
    assert fingerprint(OLD) in out and OLD not in out and NEW not in out
    assert await _stored_secrets(redis, made["id"]) == before
    assert await _cli("status", lambda: both) == 3
    assert "lack the newest key" in capsys.readouterr().out
    # the rollout done: the old process gone (its word lapses), the new ones say NEW
    await old_api.close()
    await redis.delete(c.KEYS_SEEN_KEY)
    # one that holds NEW but still seals with OLD (the rollout's first step only) is refused
    # too: it would go on sealing with OLD after the reseal
    first_step = await make_api(secrets_key=f"{OLD},{NEW}")
    assert await _cli("reseal", lambda: both) == 3
    assert "or do not seal with it" in capsys.readouterr().out
    await first_step.close()
    await redis.delete(c.KEYS_SEEN_KEY)
    await make_api(secrets_key=f"{NEW},{OLD}")
    assert await _cli("reseal", lambda: both) == 0
    assert "sealed anew with the newest key: 1" in capsys.readouterr().out
    held = await redis.hgetall(c.KEYS_SEEN_KEY)  # type: ignore[misc]
    assert list(held) == [f"{fingerprint(NEW)},{fingerprint(OLD)}"], held


async def test_values_no_key_opens_are_named_and_left_as_they_are(
    make_api: ApiFactory, redis: Redis, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: a secret sealed with a key no longer in RELAY_SECRETS_KEY is not lost further
    by a reseal: it is counted, its watch named, left byte for byte, and the command exits
    3 so a rotation script stops before the old key is dropped."""
    lost = await _register(
        await make_api(secrets_key=LOST), {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/x"}
    )
    kept = await _register(
        await make_api(secrets_key=OLD), {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/y"}
    )
    broken = await _register(
        await make_api(secrets_key=OLD), {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/z"}
    )
    await redis.hset(f"cr:w:{broken['id']}", "secrets", "not json")  # type: ignore[misc]
    odd = await _register(
        await make_api(secrets_key=OLD), {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/o"}
    )
    await redis.set(f"cr:w:{odd['id']}:r", "[1, 2]")  # JSON, but no registration
    before = await redis.hget(f"cr:w:{lost['id']}", "secrets")  # type: ignore[misc]
    both = settings.model_copy(update={"secrets_key": f"{NEW},{OLD}"})
    assert await _cli("reseal", lambda: both) == 3
    out = capsys.readouterr().out
    assert "3 that no key opens" in out and kept["id"] not in out, out
    # (a field that is no secret list, a registration that is no object: named too)
    assert lost["id"] in out and broken["id"] in out and odd["id"] in out
    assert "put the key they were sealed with back" in out
    assert "sealed anew with the newest key: 1" in out
    assert await redis.hget(f"cr:w:{lost['id']}", "secrets") == before  # type: ignore[misc]
    assert await _cli("status", lambda: both) == 3
    assert "3 that no key opens" in capsys.readouterr().out


def test_what_the_command_says_and_its_exit_status() -> None:
    """A reseal that found values changed meanwhile (by the relay, or a second reseal
    running beside it) has not failed: exit 0, and it says to check with status; a status
    that found no watch at all is not an all-clear (a REDIS_URL that is not the relay's)."""
    at = running.where("redis://:pw-HIDDEN@redis.example:6379/2?password=pw-HIDDEN")
    assert at == "redis://redis.example:6379/2"
    keys = [NEW, OLD]
    text, code = secrets_cli.report("reseal", Tally(watches=3, older=3, changed=3), keys, at)
    assert code == 0 and "left, changed since they were read" in text and "status" in text
    text, code = secrets_cli.report("status", Tally(), [NEW], at)
    assert code == 3 and "0 watches in redis://redis.example:6379/2" in text
    assert "no watch found" in text and "can be dropped" not in text
    text, code = secrets_cli.report("status", Tally(watches=1, current=1), keys, at)
    assert code == 0 and "1 watch in" in text and "older keys can be dropped" in text
    # values stored plain (before the first key) are not an all-clear either: a first key's
    # rollout checks exactly this before it is relied on
    for tally in (Tally(watches=2, plain=2), Tally(watches=2, current=1, plain=1)):
        said, exit_status = secrets_cli.report("status", tally, [NEW], at)
        assert exit_status == 3 and "reseal" in said and "can be dropped" not in said, said
    # the newest key named by a fingerprint an operator can make with sha256sum, no more
    made = subprocess.run(
        ["sha256sum"], input=NEW.encode(), capture_output=True, check=True
    ).stdout.decode()[:12]
    assert f"2 keys in RELAY_SECRETS_KEY, the newest {made})" in text
    assert NEW not in text and OLD not in text and fingerprint(OLD) not in text


def _sha1(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()  # noqa: S324 (as Redis' sha1hex)


async def test_a_value_changed_since_it_was_read_is_left_to_its_writer(redis: Redis) -> None:
    """Rule: the script writes a re-sealed value only over what was read (named by its
    SHA-1: the value itself never goes to Redis as an argument, where SLOWLOG or MONITOR
    would show it); a secret rotated, a registration changed, or a watch purged in between
    wins."""
    reseal = scripts.register(redis, "reseal")
    await redis.hset("cr:w:a", mapping={"secrets": "read-a", "st": "x"})  # type: ignore[misc]
    await redis.hset("cr:w:b", mapping={"secrets": "rotated-since"})  # type: ignore[misc]
    await redis.hset("cr:w:c", mapping={"secrets": "read-c"})  # type: ignore[misc]
    await redis.hset("cr:w:d", mapping={"secrets": "rotated-since"})  # type: ignore[misc]
    await redis.set("cr:w:a:r", "reg-a", px=60_000)
    await redis.set("cr:w:c:r", "changed-since")
    await redis.set("cr:w:d:r", "changed-since")
    left = await reseal(
        keys=[],
        args=[
            *("cr:w:", ":r"),
            *("a", _sha1("read-a"), "new-a", _sha1("reg-a"), "new-reg-a"),
            *("b", _sha1("read-b"), "new-b", "", ""),
            *("c", _sha1("read-c"), "new-c", _sha1("reg-c"), "new-reg-c"),
            *("d", _sha1("read-d"), "new-d", _sha1("reg-d"), "new-reg-d"),
            *("gone", _sha1("read-e"), "new-e", _sha1("reg-e"), "new-reg-e"),
        ],
    )
    assert left == [0, 1, 2, 3, 4]
    assert await redis.hget("cr:w:a", "secrets") == "new-a"  # type: ignore[misc]
    assert await redis.get("cr:w:a:r") == "new-reg-a"
    assert 0 < await redis.pttl("cr:w:a:r") <= 60_000  # its time to live kept
    assert await redis.hget("cr:w:b", "secrets") == "rotated-since"  # type: ignore[misc]
    assert await redis.hget("cr:w:c", "secrets") == "new-c"  # type: ignore[misc]
    assert await redis.get("cr:w:c:r") == await redis.get("cr:w:d:r") == "changed-since"
    assert await redis.hget("cr:w:d", "secrets") == "rotated-since"  # type: ignore[misc]
    assert not await redis.exists("cr:w:gone", "cr:w:gone:r")  # nothing made for a purged one


async def test_a_reseal_beside_the_relay_counts_what_changed_and_what_went(
    make_api: ApiFactory, redis: Redis, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: a watch whose secret is rotated, or that is purged, between the reseal's read and
    its write is left to that change -- counted as changed (the rotation) or not at all (the
    purge), and the reseal still exits 0: nothing is wrong, a status checks what is left."""
    api = await make_api(secrets_key=OLD)
    made = [
        await _register(api, {"videoId": "v1", "callbackUrl": f"http://127.0.0.1:9/{n}"})
        for n in range(3)
    ]
    rotated, purged, kept = (w["id"] for w in made)
    real = Resealer.__init__

    def meddling(self: Resealer, redis_: Redis, box: SecretBox) -> None:
        real(self, redis_, box)
        script = self._reseal

        async def after_the_read(**kw: Any) -> Any:  # the relay, between read and write
            await redis_.hset(f"cr:w:{rotated}", "secrets", "[]")  # type: ignore[misc]
            await redis_.delete(f"cr:w:{purged}", f"cr:w:{purged}:r")
            return await script(**kw)

        self._reseal = after_the_read  # type: ignore[assignment]

    both = settings.model_copy(update={"secrets_key": f"{NEW},{OLD}"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Resealer, "__init__", meddling)
        assert await _cli("reseal", lambda: both) == 0
    out = capsys.readouterr().out
    assert "found 3 watches" in out and "3 with an older one" in out, out
    assert "sealed anew with the newest key: 1" in out
    assert "left, changed since they were read (by the relay, another reseal" in out
    assert "dropped connection): 1;" in out
    ((sealed, _),) = await _stored_secrets(redis, kept)
    assert SecretBox(NEW).open(sealed) == made[2]["secret"]


async def test_the_command_needs_a_key_and_counts_many_watches_in_bounded_steps(
    make_api: ApiFactory, redis: Redis, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without RELAY_SECRETS_KEY there is nothing to seal with (exit 2, a configuration
    error); with one, watches past one step (BATCH) of two tenants are all seen."""
    assert await _cli("status", lambda: settings) == 2
    assert "RELAY_SECRETS_KEY: not set" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not set"):
        Resealer(redis, SecretBox(""))
    api = await make_api(secrets_key=OLD, rate_limit=1000)
    # (more than a listpack's 128 members on one tenant: ZSCAN then takes several steps)
    many = 3 * BATCH + 30
    for n in range(many):
        headers = auth() if n % 10 else auth(TENANT_B_KEY)
        resp = await api.post(
            "/v1/watches",
            json={"videoId": f"v{n % 3}", "callbackUrl": "http://127.0.0.1:9/h"},
            headers=headers,
        )
        assert resp.status == 201
    assert await redis.zcard("cr:t:tenant-a:w") > 128
    steps = 0
    real_zscan = redis.zscan

    async def counted(*a: Any, **kw: Any) -> Any:
        nonlocal steps
        steps += 1
        return await real_zscan(*a, **kw)

    redis.zscan = counted  # type: ignore[method-assign]
    tally = await Resealer(redis, SecretBox(f"{NEW},{OLD}")).run(write=True)
    assert steps > 2  # (two tenants, one of them in several steps)
    assert (tally.watches, tally.older, tally.written, tally.changed) == (many,) * 3 + (0,)
    again = await Resealer(redis, SecretBox(NEW)).run(write=False)
    assert (again.current, again.older, again.plain, again.unreadable) == (many, 0, 0, 0)


async def test_clip_relay_secrets_runs_as_a_command(
    make_api: ApiFactory, redis_server: RedisServer
) -> None:
    """``clip-relay secrets status`` as a process: the key comes from the environment, is
    never printed, and the exit status says whether a reseal is due."""
    await _register(
        await make_api(secrets_key=OLD), {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/z"}
    )

    async def command(keys: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("clip-relay")),
            "secrets",
            "status",
            env=dict(
                os.environ, REDIS_URL=redis_server.url, RELAY_SECRETS_KEY=keys, LOG_FORMAT="console"
            ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await command(f"{NEW},{OLD}")
    assert code == 3 and "1 with an older one" in out and "secrets reseal" in out, out
    code, out = await command(OLD)
    assert code == 0 and "older keys can be dropped" in out, out
    assert OLD not in out and NEW not in out


async def test_a_process_does_not_start_sealing_with_a_key_running_processes_lack(
    make_api: ApiFactory, redis: Redis, redis_server: RedisServer
) -> None:
    """Rule: an API or worker whose newest key is not held by every process seen in the last
    minute refuses to start (exit 2, their key sets named by fingerprint): they could not
    open what it would store. One that holds their keys second -- the rotation's first
    step -- or that shares its newest key with them starts. Fails before: an API with an
    unrelated key started silently, and the secrets it stored failed every later ping and
    delivery (a tester's run, 2026-12-07)."""
    await make_api(secrets_key=OLD)  # (says so in cr:keys:seen as it starts)

    def start(command: str, keys: str) -> Awaitable[tuple[int | None, str]]:
        return start_process(redis_server, command, keys)

    for command, keys in (("api", NEW), ("api", f"{NEW},{OLD}"), ("worker", NEW)):
        code, out = await start(command, keys)
        assert code == 2, (command, keys, out)
        assert f"seals with the key {fingerprint(NEW)}" in out and fingerprint(OLD) in out
        assert NEW not in out and OLD not in out
    code, out = await start("api", f"{OLD},{NEW}")  # the rotation's first step
    assert code is None, out
    await redis.delete(c.KEYS_SEEN_KEY)  # nothing running: nothing to compare
    code, out = await start("api", NEW)
    assert code is None, out


async def start_process(
    redis_server: RedisServer, command: str, keys: str
) -> tuple[int | None, str]:
    """Its exit status and output; None once an API says it listens (it started)."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("clip-relay")),
        command,
        env=dict(
            os.environ,
            REDIS_URL=redis_server.url,
            RELAY_SECRETS_KEY=keys,
            RELAY_API_KEYS="t:" + "k" * 32,
            SCALEREACH_API_KEY="sk_test",
            RELAY_PORT="0",
            RELAY_METRICS_PORT="0",
            LOG_FORMAT="console",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while line := (await proc.stdout.readline()).decode():
                lines.append(line)
                if "api listening" in line:
                    proc.terminate()
                    await proc.wait()
                    return None, "".join(lines)
            return await proc.wait(), "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_process_does_not_start_beside_processes_it_could_not_follow(
    make_api: ApiFactory, redis_server: RedisServer
) -> None:
    """Rule: a first key rolls out as plain,NEW then NEW -- a process sealing with NEW
    refuses to start beside processes without a key, which could not open what it seals (a
    tester's run: its API started, and the worker without the key failed every event it
    sealed), and plain,NEW, which seals nothing, starts. The other way round (a review): a
    process without the key that processes running seal with, or with another key only,
    refuses to start too -- it could not open what they store."""
    await make_api(secrets_key="")
    code, out = await start_process(redis_server, "worker", NEW)
    assert code == 2 and "no key" in out and "plain,KEY" in out, out
    code, out = await start_process(redis_server, "api", f"plain,{NEW}")
    assert code is None, out
    await make_api(secrets_key=NEW)  # (seals with NEW)
    for keys, why in (("", "is not set to"), (f"plain,{OLD}", "does not hold")):
        code, out = await start_process(redis_server, "api", keys)
        assert code == 2, (keys, out)
        assert f"seal with the key {fingerprint(NEW)}" in out and why in out, out
        assert NEW not in out and OLD not in out
    code, out = await start_process(redis_server, "api", f"plain,{NEW}")
    assert code is None, out


async def test_a_key_check_redis_answers_with_an_error_is_said_not_taken_for_redis_away(
    redis: Redis, redis_server: RedisServer
) -> None:
    """The start's key check met an error reply (here the note of keys held is not a hash):
    the process starts, as when Redis is away, but says that it could not compare. Fails
    before: every error was taken for "Redis away", without a word (a review, 2026-12-08)."""
    await redis.delete(c.KEYS_SEEN_KEY)
    await redis.set(c.KEYS_SEEN_KEY, "not a hash")
    try:
        code, out = await start_process(redis_server, "api", NEW)
    finally:
        await redis.delete(c.KEYS_SEEN_KEY)
    assert code is None, out
    assert "could not compare RELAY_SECRETS_KEY" in out and "WRONGTYPE" in out, out
    assert NEW not in out
