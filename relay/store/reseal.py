"""Re-sealing stored secrets after a RELAY_SECRETS_KEY rotation (``clip-relay secrets``).

What is sealed at rest: each watch's webhook secrets (its state's ``secrets`` field, up to
three) and its callback URL's credential (``callbackAuth`` in its registration). Once a new
key is first in RELAY_SECRETS_KEY, new values are sealed with it and the old ones still
open with the old key. :meth:`Resealer.run` walks every tenant's index of watches (``SSCAN``
of the tenants, ``ZSCAN`` of each index: bounded steps, never the keyspace), reads a batch
of watches in one pipeline, and writes anew each value not sealed with the newest key -- a
plain one, stored before any key was set, sealed -- through one ``reseal`` script call per
batch, which writes only what has not changed since it was read (a rotated secret, a purged
watch win). Without writing it only counts. A value that no key opens is counted, named by
its watch, and left as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay import constants as c
from relay.domain import userinfo
from relay.domain.crypto import PLAIN, SEALED_PREFIX, SecretBox
from relay.domain.watch import SecretEntry
from relay.store import scripts
from relay.store.codec import dump_secrets, load_secrets

BATCH = 100  # watches read in one pipeline and written in one script call
NAMED = 20  # watches named for values that no key opens, at most
GONE = 4  # the script's answer for a watch deleted since it was read
Kind = Literal["current", "older", "plain", "unreadable"]


@dataclass
class Tally:
    """What a run found and did. Values are counted one by one (a watch has one to four)."""

    watches: int = 0
    current: int = 0  # sealed with the newest key
    older: int = 0  # sealed with another key of RELAY_SECRETS_KEY
    plain: int = 0  # stored plain (before any key was set): a secret, a URL's credential
    unreadable: int = 0  # no key opens them: left as they are
    unreadable_watches: int = 0  # the watches with such values
    written: int = 0  # older and plain ones written sealed with the newest key
    changed: int = 0  # left: changed by another writer between the read and the write
    unreadable_in: list[str] = field(default_factory=list)  # their watches (the first NAMED)


def _sha1(value: str) -> str:
    """As Lua's ``redis.sha1hex`` makes it of the same string (its UTF-8 bytes)."""
    return hashlib.sha1(value.encode()).hexdigest()  # noqa: S324 (a compare, not a secret)


class Resealer:
    """Counts, or re-seals, every watch's stored secrets with *box*'s newest key."""

    def __init__(self, redis: Redis, box: SecretBox) -> None:
        if not box.sealing:
            raise ValueError("RELAY_SECRETS_KEY is not set: there is no key to seal with")
        self.redis = redis
        self.box = box
        self._reseal = scripts.register(redis, "reseal")

    async def run(self, *, write: bool) -> Tally:
        """Every watch of every tenant, once (a watch the index moves during a step may be
        seen twice; a second look finds it current)."""
        tally, cursor = Tally(), 0
        while True:
            cursor, tenants = await self.redis.sscan(c.TENANTS_KEY, cursor, count=100)
            for tenant in sorted(tenants):
                await self._tenant(tenant, tally, write)
            if not int(cursor):
                return tally

    async def _tenant(self, tenant: str, tally: Tally, write: bool) -> None:
        key, cursor = c.TENANT_INDEX_KEY.format(tenant), 0
        while True:
            cursor, members = await self.redis.zscan(key, cursor, count=BATCH)
            ids = [m for m, _ in members]
            for start in range(0, len(ids), BATCH):
                await self._batch(ids[start : start + BATCH], tally, write)
            if not int(cursor):
                return

    def _kind(self, stored: str) -> Kind:
        if self.box.current(stored):
            return "current"
        if not stored.startswith(SEALED_PREFIX):
            return "plain"
        try:
            self.box.open(stored)
        except ValueError:
            return "unreadable"
        return "older"

    def _look(self, values: list[str], tally: Tally) -> list[bool]:
        """Count *values*; which of them to write anew."""
        redo = []
        for value in values:
            kind = self._kind(value)
            setattr(tally, kind, getattr(tally, kind) + 1)
            redo.append(kind in ("older", "plain"))
        return redo

    def _plan(
        self, raw: str | None, reg: str | None, tally: Tally, write: bool
    ) -> tuple[str, str, int, int]:
        """One watch's values counted and, when *write*, sealed anew: its new ``secrets``
        field and registration ('' = leave it), and how many values each carries anew.
        ValueError: a value that cannot be read (nothing of it is written)."""
        try:
            entries = load_secrets(raw or "")
            doc = orjson.loads(reg) if reg else {}
        except (orjson.JSONDecodeError, TypeError, ValueError):
            raise ValueError("unreadable") from None
        if not isinstance(doc, dict):
            raise ValueError("unreadable")
        redo = self._look([s.sealed for s in entries], tally)
        auth, url = str(doc.get("callbackAuth") or ""), str(doc.get("callbackUrl") or "")
        # registered before any key was set: its credential, if any, is in the URL
        in_url = not auth and bool(userinfo.hide(url)[1])
        tally.plain += in_url
        redo_auth = self._look([auth] if auth else [], tally)
        if not write:  # (a status: counted, nothing sealed)
            return "", "", 0, 0
        new_raw = new_reg = ""
        if any(redo):
            fresh = [
                SecretEntry(self.box.reseal(s.sealed), s.expires_ms) if r else s
                for s, r in zip(entries, redo, strict=True)
            ]
            new_raw = dump_secrets(fresh)
        if any(redo_auth):
            doc["callbackAuth"] = self.box.reseal(auth)
        elif in_url:
            doc["callbackUrl"], doc["callbackAuth"] = userinfo.seal_apart(url, self.box.seal)
        if any(redo_auth) or in_url:
            new_reg = orjson.dumps(doc).decode()
        return new_raw, new_reg, sum(redo), 1 if new_reg else 0

    async def _batch(self, ids: list[str], tally: Tally, write: bool) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hget(c.WATCH_KEY.format(wid), "secrets")
                pipe.get(c.REGISTRATION_KEY.format(wid))
            got = await pipe.execute()
        args: list[str] = [c.WATCH_PREFIX, c.REGISTRATION_SUFFIX]
        planned: list[tuple[int, int]] = []  # per watch written: values in secrets, in reg
        for i, wid in enumerate(ids):
            raw, reg = got[2 * i], got[2 * i + 1]
            if raw is None and reg is None:  # purged since the index was read
                continue
            tally.watches += 1
            unreadable = tally.unreadable
            try:
                new_raw, new_reg, in_secrets, in_reg = self._plan(raw, reg, tally, write)
            except ValueError:  # (stored data that is not the relay's: named, left alone)
                tally.unreadable += 1
                new_raw = new_reg = ""
            if tally.unreadable > unreadable:
                tally.unreadable_watches += 1
                if len(tally.unreadable_in) < NAMED:
                    tally.unreadable_in.append(wid)
            if not (new_raw or new_reg):  # (nothing to seal, or a status)
                continue
            # (what was read goes as its SHA-1, never itself: a plain secret or credential
            # would show in SLOWLOG or MONITOR)
            args += [wid, _sha1(raw) if new_raw else "", new_raw]
            args += [_sha1(reg) if new_reg else "", new_reg]
            planned.append((in_secrets, in_reg))
        if len(args) == 2:
            return
        left = await self._reseal(keys=[], args=args)
        for (in_secrets, in_reg), code in zip(planned, left, strict=True):
            if int(code) == GONE:  # purged in between: nothing to seal
                continue
            lost = (in_secrets if int(code) & 1 else 0) + (in_reg if int(code) & 2 else 0)
            tally.changed += lost
            tally.written += in_secrets + in_reg - lost


def say_keys(pipe: Pipeline, held: str, now_ms: int) -> None:
    """Queue on *pipe* this process' word that it holds the keys *held*
    (:func:`relay.domain.crypto.held`) -- for the next minute; the hash lapses ten minutes
    after the last word of any process."""
    pipe.hset(c.KEYS_SEEN_KEY, held, str(now_ms + c.KEYS_SEEN_MS))
    pipe.pexpire(c.KEYS_SEEN_KEY, c.KEYS_SEEN_KEPT_MS)


def cannot_open(held: str, seen: list[list[str]]) -> list[list[str]]:
    """The key sets, of those *seen*, that lack the key a process holding *held*
    (:func:`relay.domain.crypto.held`) would seal with -- its first: processes that could
    not open what it stores, those without a key too (a tester's first key: the API with it
    started beside a worker without one, which failed every event it sealed). Nothing, when
    it seals nothing (no key, or ``plain`` first)."""
    newest = held.split(",")[0]
    if newest in ("none", PLAIN):
        return []
    return [keys for keys in seen if newest not in keys]


def cannot_open_theirs(held: str, seen: list[list[str]]) -> list[str]:
    """The keys (fingerprints) that processes *seen* seal with and a process holding *held*
    lacks: it could not open what they store (a pod restarted without the key, or with the
    old one only, beside pods that seal with the new one -- a review)."""
    mine = set() if held == "none" else set(held.split(","))
    sealing = {keys[0] for keys in seen if keys and keys[0] != PLAIN}
    return sorted(sealing - mine)


async def keys_seen(redis: Redis) -> list[list[str]]:
    """What the API and worker processes seen in the last minute hold: per set of keys, its
    fingerprints, newest first ([] for a process without a key). Words older than ten
    minutes are deleted (a rotation's old sets do not pile up)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(c.KEYS_SEEN_KEY)
        pipe.time()
        said, (secs, micros) = await pipe.execute()
    now = int(secs) * 1000 + int(micros) // 1000
    old = [h for h, until in said.items() if int(until) < now - c.KEYS_SEEN_KEPT_MS]
    if old:
        await redis.hdel(c.KEYS_SEEN_KEY, *old)  # type: ignore[misc]
    return [[] if h == "none" else h.split(",") for h, until in said.items() if int(until) > now]
