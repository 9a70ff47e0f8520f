"""Secrets at rest: webhook secrets sealed in Redis (RELAY_SECRETS_KEY), API keys held only
as digests and compared without early exit.

Unit tests of :class:`relay.domain.crypto.SecretBox` and
:class:`relay.api.auth.Authenticator`, then the
real thing: the API on a real valkey-server seals what it stores, and an in-process arq
worker still signs deliveries that a real receiver verifies.
"""

from __future__ import annotations

import asyncio
import base64
import time
import traceback
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet
from redis.asyncio import Redis

from relay.api import appkeys as k
from relay.api.auth import Authenticator
from relay.devtools.receiver import Receiver
from relay.domain.crypto import SEALED_PREFIX, SecretBox, fingerprint, held, split_keys
from relay.domain.signing import generate_secret, verify
from relay.settings import ApiKey, ConfigError, Settings, load
from relay.store.reseal import cannot_open
from tests.conftest import TENANT_A_KEY, TENANT_B_KEY, ApiFactory, WorkerFactory, auth

Client = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
KEY_1 = Fernet.generate_key().decode()
KEY_2 = Fernet.generate_key().decode()


def _key_part(secret: str) -> str:
    return secret.removeprefix("whsec_")


# --- SecretBox --------------------------------------------------------------------------------


def test_sealed_values_differ_from_plain_and_open_back() -> None:
    box = SecretBox(KEY_1)
    secret = generate_secret()
    sealed = box.seal(secret)
    assert sealed.startswith(SEALED_PREFIX)
    assert secret not in sealed and _key_part(secret) not in sealed
    assert box.open(sealed) == secret
    assert box.seal(secret) != sealed  # a fresh IV each time: equal secrets are not linkable
    assert SecretBox(KEY_1).open(sealed) == secret  # any process with the key opens it


def _failure(box: SecretBox, stored: str) -> ValueError:
    with pytest.raises(ValueError, match="RELAY_SECRETS_KEY") as info:
        box.open(stored)
    return info.value


@pytest.mark.parametrize("opener", ["wrong key", "no key"])
def test_a_secret_that_cannot_be_opened_fails_clearly(opener: str) -> None:
    secret = generate_secret()
    sealed = SecretBox(KEY_1).seal(secret)
    err = _failure(SecretBox(KEY_2 if opener == "wrong key" else ""), sealed)
    text = "".join(traceback.format_exception(err))
    for value in (secret, _key_part(secret), sealed, KEY_1, KEY_2):
        assert value not in text
    # no chained InvalidToken (whose context could carry the token) in tracebacks
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


@pytest.mark.parametrize("stored", ["enc:", "enc:garbage", "enc:" + "A" * 100, "enc:\u00e9"])
def test_corrupt_sealed_values_fail_clearly(stored: str) -> None:
    err = _failure(SecretBox(KEY_1), stored)
    token = stored.removeprefix("enc:")
    if token:
        assert token not in str(err)


def test_plain_first_seals_nothing_and_opens_with_the_keys_behind_it() -> None:
    """``plain,KEY``: the first step of a first key -- a process stores plain and opens what
    KEY seals, so that none meets a value it cannot open while KEY rolls out. Only first,
    and only before a key."""
    secret = generate_secret()
    box = SecretBox(f"plain,{KEY_1}")
    assert box.seal(secret) == secret and not box.sealing
    assert box.open(SecretBox(KEY_1).seal(secret)) == secret
    assert box.current(secret) and not box.current(SecretBox(KEY_1).seal(secret))
    assert held(f"plain,{KEY_1}") == f"plain,{fingerprint(KEY_1)}"
    assert cannot_open(held(f"plain,{KEY_1}"), [[]]) == []  # (seals nothing: opens anywhere)
    assert cannot_open(held(KEY_1), [[], [fingerprint(KEY_1)]]) == [[]]
    assert cannot_open(held(KEY_1), [["plain", fingerprint(KEY_1)]]) == []
    for raw in ("plain", f"{KEY_1},plain", f"plain,plain,{KEY_1}"):
        with pytest.raises(ValueError, match="plain goes first and before a key"):
            split_keys(raw)


def test_without_a_key_values_stay_plain() -> None:
    box = SecretBox("")
    secret = generate_secret()
    assert box.seal(secret) == secret
    assert box.open(secret) == secret


def test_plain_values_stay_readable_after_a_key_is_configured() -> None:
    secret = generate_secret()
    stored_before = SecretBox("").seal(secret)
    assert SecretBox(KEY_1).open(stored_before) == secret


@pytest.mark.parametrize(
    "raw",
    ["short", "x" * 44, KEY_1[:-2], KEY_1[:20]],
    ids=["short", "x44", "cut-by-2", "cut-to-20"],  # (the same ids on every xdist worker)
)
def test_a_malformed_secrets_key_is_refused_without_echo(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"RELAY_SECRETS_KEY": raw})
    assert str(info.value).startswith("RELAY_SECRETS_KEY")
    assert raw not in str(info.value)


# --- API keys ---------------------------------------------------------------------------------


def _strings(obj: Any, seen: set[int] | None = None) -> Iterator[str | bytes]:
    """Every str and bytes reachable from *obj* through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings(key, seen)
            yield from _strings(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from _strings(item, seen)
    elif not isinstance(obj, int | float | bool | type(None)):
        names = list(getattr(obj, "__dict__", {}))
        for cls in type(obj).__mro__:
            names += list(getattr(cls, "__slots__", ()))
        for name in names:
            if hasattr(obj, name):
                yield from _strings(getattr(obj, name), seen)


def _assert_holds_no_key(obj: Any, keys: list[str]) -> None:
    held = list(_strings(obj))
    assert held, "the walk found nothing: it cannot see inside this object"
    for key in keys:
        for value in held:
            text = value if isinstance(value, str) else value.decode("latin-1")
            assert key not in text, "a plain API key is held"
    for key in keys:
        assert key not in repr(obj)


def test_authenticator_holds_no_plain_key() -> None:
    auth_ = Authenticator([ApiKey("tenant-a", TENANT_A_KEY), ApiKey("tenant-b", TENANT_B_KEY)])
    _assert_holds_no_key(auth_, [TENANT_A_KEY, TENANT_B_KEY])
    who = auth_.authenticate(f"Bearer {TENANT_A_KEY}")
    assert who is not None and who.tenant == "tenant-a"
    assert who.key_id not in TENANT_A_KEY and TENANT_A_KEY not in who.key_id


async def test_running_api_authenticator_holds_no_plain_key(api: Client) -> None:
    _assert_holds_no_key(api.app[k.AUTH], [TENANT_A_KEY, TENANT_B_KEY])


def _flip(ch: str) -> str:
    return "x" if ch != "x" else "y"


@pytest.mark.parametrize(
    "token",
    [
        TENANT_A_KEY[:-1] + _flip(TENANT_A_KEY[-1]),
        _flip(TENANT_A_KEY[0]) + TENANT_A_KEY[1:],
        TENANT_A_KEY[:-1],
        TENANT_A_KEY[1:],
        TENANT_A_KEY + "0",
        "0" + TENANT_A_KEY,
        TENANT_A_KEY.upper(),
        TENANT_A_KEY[: len(TENANT_A_KEY) // 2],
        TENANT_A_KEY + TENANT_B_KEY,
        "",
    ],
    ids=[
        "last-char",
        "first-char",
        "prefix",
        "suffix",
        "longer",
        "prefixed",
        "upper",
        "half",
        "both",
        "empty",
    ],
)
def test_near_miss_keys_are_refused(token: str) -> None:
    auth_ = Authenticator([ApiKey("tenant-a", TENANT_A_KEY), ApiKey("tenant-b", TENANT_B_KEY)])
    assert auth_.authenticate(f"Bearer {token}") is None


@pytest.mark.parametrize("which", ["last-char", "first-char"])
async def test_near_miss_keys_are_401_over_http(api: Client, which: str) -> None:
    key = TENANT_A_KEY
    token = key[:-1] + _flip(key[-1]) if which == "last-char" else _flip(key[0]) + key[1:]
    resp = await api.get("/v1/watches", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert token not in await resp.text()


def test_each_key_maps_to_its_own_tenant() -> None:
    auth_ = Authenticator([ApiKey("tenant-a", TENANT_A_KEY), ApiKey("tenant-b", TENANT_B_KEY)])
    a = auth_.authenticate(f"Bearer {TENANT_A_KEY}")
    b = auth_.authenticate(f"bearer {TENANT_B_KEY}")
    assert a is not None and b is not None
    assert (a.tenant, b.tenant) == ("tenant-a", "tenant-b")
    assert a.key_id != b.key_id


# --- through the API and a worker ---------------------------------------------------------------


async def _stored_secrets(redis: Redis, watch_id: str) -> list[list[Any]]:
    raw = await redis.hget(f"cr:w:{watch_id}", "secrets")  # type: ignore[misc]
    assert raw is not None
    entries: list[list[Any]] = orjson.loads(raw)
    return entries


async def test_api_stores_no_webhook_secret_in_plain(make_api: ApiFactory, redis: Redis) -> None:
    api = await make_api(secrets_key=KEY_1)
    given = generate_secret()
    headers = {**auth(), "Idempotency-Key": "sealed-1"}
    payload = {"videoId": "v1", "callbackUrl": "http://127.0.0.1:9/h", "secret": given}
    made = await (await api.post("/v1/watches", json=payload, headers=headers)).json()
    assert made["secret"] == given
    replay = await api.post("/v1/watches", json=payload, headers=headers)
    assert replay.status == 200 and (await replay.json())["secret"] == given
    other = await api.post(
        "/v1/watches", json={"videoId": "v2", "callbackUrl": "http://127.0.0.1:9/h"}, headers=auth()
    )
    generated = (await other.json())["secret"]
    rotated = (
        await (await api.post(f"/v1/watches/{made['id']}/rotate-secret", headers=auth())).json()
    )["secret"]
    box = SecretBox(KEY_1)
    plain = [given, generated, rotated]
    for wid, expected in (
        (made["id"], [rotated, given]),
        ((await other.json())["id"], [generated]),
    ):
        entries = await _stored_secrets(redis, wid)
        assert [box.open(sealed) for sealed, _ in entries] == expected
        field = orjson.dumps(entries).decode()
        assert "whsec_" not in field
        assert all(sealed.startswith(SEALED_PREFIX) for sealed, _ in entries)
    stored = await _everything(redis)
    assert any(SEALED_PREFIX in value for _, value in stored)  # the scan sees the sealed field
    for key, value in stored:
        for secret in plain:
            assert secret not in value and _key_part(secret) not in value, key


async def _everything(redis: Redis) -> list[tuple[str, str]]:
    """(key, text) for every key name and every value stored under it."""
    out: list[tuple[str, str]] = []
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        values: list[Any] = [key]
        if kind == "string":
            values.append(await redis.get(key))
        elif kind == "hash":
            values += [*(await redis.hgetall(key)).items()]  # type: ignore[misc]
        elif kind == "list":
            values += await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            values += await redis.smembers(key)  # type: ignore[misc]
        elif kind == "zset":
            values += await redis.zrange(key, 0, -1)
        out += [(key, str(v)) for v in values]
    return out


async def _sim_video(sim: Client, complete_after: float = 0.3) -> str:
    timeline = [
        {"status": "analyzing", "progress": 50, "after": 0},
        {"status": "completed", "progress": 100, "after": complete_after},
    ]
    resp = await sim.post("/_sim/videos", json={"timeline": timeline})
    assert resp.status == 201
    return str((await resp.json())["id"])


async def _wait_final(api: Client, watch_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, Any] = await (
            await api.get(f"/v1/watches/{watch_id}", headers=auth())
        ).json()
        if got["status"] in ("delivered", "failed", "disabled", "cancelled"):
            return got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)


async def test_sealed_secrets_still_sign_deliveries(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, receiver: Rec, redis: Redis
) -> None:
    api = await make_api(secrets_key=KEY_1)
    await make_worker(secrets_key=KEY_1)
    rec, base = receiver
    given = generate_secret()
    vid = await _sim_video(sim, complete_after=0.5)
    made = await (
        await api.post(
            "/v1/watches",
            json={"videoId": vid, "callbackUrl": base + "/sealed", "secret": given},
            headers=auth(),
        )
    ).json()
    rotated = (
        await (await api.post(f"/v1/watches/{made['id']}/rotate-secret", headers=auth())).json()
    )["secret"]
    rec.add_secret(rotated)  # the receiver only knows the new one: the new one must sign
    got = await _wait_final(api, made["id"])
    assert got["status"] == "delivered", got
    (event,) = rec.events
    raw, headers = orjson.dumps(event.event), event.attempt_headers
    assert verify(raw, headers, rotated)["data"]["watchId"] == made["id"]
    assert verify(raw, headers, given)["data"]["watchId"] == made["id"]
    assert "whsec_" not in str(await _stored_secrets(redis, made["id"]))


async def test_a_callback_credential_is_sealed_at_rest_and_still_sent(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, receiver: Rec, redis: Redis
) -> None:
    """Rule: with RELAY_SECRETS_KEY, a callback URL's password or token is stored sealed
    (nothing in Redis holds it in plain), shown as ***, and still sent as Basic
    authorization -- to the event and to a ping."""
    api = await make_api(secrets_key=KEY_1)
    await make_worker(secrets_key=KEY_1)
    rec, base = receiver
    vid = await _sim_video(sim, complete_after=0.5)
    host = base.removeprefix("http://")
    urls = {
        "basic": (f"http://hook-user:pw-SEALED-1@{host}/basic", "hook-user:pw-SEALED-1"),
        "token": (f"http://TOKEN-SEALED-2@{host}/token", "TOKEN-SEALED-2:"),
    }
    made = {}
    for name, (url, _) in urls.items():
        resp = await api.post(
            "/v1/watches", json={"videoId": vid, "callbackUrl": url}, headers=auth()
        )
        made[name] = await resp.json()
        rec.add_secret(made[name]["secret"])
    assert made["basic"]["callbackUrl"] == f"http://***@{host}/basic"  # (all of it sealed)
    assert made["token"]["callbackUrl"] == f"http://***@{host}/token"
    for key, value in await _everything(redis):
        assert "SEALED" not in value, key
    for w in made.values():
        assert (await _wait_final(api, w["id"]))["status"] == "delivered"
        ping = await api.post(f"/v1/watches/{w['id']}/ping", headers=auth())
        assert ping.status == 202
    await rec.wait_for(4, timeout=10)
    events = rec.events
    assert sorted(e.path.rsplit("/", 1)[-1] for e in events) == ["basic"] * 2 + ["token"] * 2
    for e in events:
        cred = urls[e.path.rsplit("/", 1)[-1]][1]
        assert (
            e.attempt_headers["authorization"]
            == "Basic " + base64.b64encode(cred.encode()).decode()
        )
    for key, value in await _everything(redis):  # (attempt records and pings neither)
        assert "SEALED" not in value, key


async def test_secrets_stored_plain_still_sign_once_a_key_is_set(
    make_api: ApiFactory, make_worker: WorkerFactory, sim: Client, receiver: Rec, redis: Redis
) -> None:
    before = await make_api()  # no RELAY_SECRETS_KEY yet
    rec, base = receiver
    vid = await _sim_video(sim, complete_after=0.3)
    made = await (
        await before.post(
            "/v1/watches", json={"videoId": vid, "callbackUrl": base + "/plain"}, headers=auth()
        )
    ).json()
    ((stored, _),) = await _stored_secrets(redis, made["id"])
    assert stored == made["secret"]  # plain, as documented without a key
    rec.add_secret(made["secret"])
    api = await make_api(secrets_key=KEY_1)
    await make_worker(secrets_key=KEY_1)
    got = await _wait_final(api, made["id"])
    assert got["status"] == "delivered", got
    assert len(rec.events) == 1


async def test_a_worker_with_the_wrong_key_fails_clearly(
    make_api: ApiFactory,
    make_worker: WorkerFactory,
    sim: Client,
    receiver: Rec,
    settings: Settings,
) -> None:
    api = await make_api(secrets_key=KEY_1)
    await make_worker(secrets_key=KEY_2)
    rec, base = receiver
    vid = await _sim_video(sim, complete_after=0.1)
    made = await (
        await api.post(
            "/v1/watches", json={"videoId": vid, "callbackUrl": base + "/wrong"}, headers=auth()
        )
    ).json()
    rec.add_secret(made["secret"])
    got = await _wait_final(api, made["id"])
    assert got["status"] == "failed", got
    assert "RELAY_SECRETS_KEY" in (got["lastError"] or ""), got
    attempts = (
        await (await api.get(f"/v1/watches/{made['id']}/deliveries", headers=auth())).json()
    )["data"]
    assert len(attempts) == len(settings.retry_schedule) + 1
    text = orjson.dumps([got, attempts]).decode()
    assert made["secret"] not in text and _key_part(made["secret"]) not in text
    assert KEY_1 not in text and KEY_2 not in text
    assert rec.events == []  # nothing unsigned or wrongly signed went out


async def test_a_replay_on_an_api_that_cannot_open_the_secret_is_a_503(
    make_api: ApiFactory,
) -> None:
    """A registration retried with its Idempotency-Key on an API without the key its secret
    was sealed with (a key rollout in progress) is a 503 to retry, naming no value -- a
    tester's replay was a 500. The API with the key answers it as it was."""
    keyed, bare = await make_api(secrets_key=KEY_1), await make_api(secrets_key="")
    headers = {**auth(), "Idempotency-Key": "rollout-1"}
    body = {"videoId": "vid_r", "callbackUrl": "http://127.0.0.1:9/h"}
    first = await keyed.post("/v1/watches", json=body, headers=headers)
    assert first.status == 201, await first.text()
    made = await first.json()
    resp = await bare.post("/v1/watches", json=body, headers=headers)
    assert resp.status == 503 and resp.headers["Retry-After"] == "5", await resp.text()
    text = await resp.text()
    assert "secret-not-readable" in text and made["secret"] not in text and "enc:" not in text
    again = await keyed.post("/v1/watches", json=body, headers=headers)
    assert again.status == 200 and await again.json() == made
