"""``clip-relay secrets status|reseal``: rotating RELAY_SECRETS_KEY, for an operator.

RELAY_SECRETS_KEY may hold several keys, comma-separated, newest first: the newest seals
what is stored from then on, every one of them opens. A rotation goes in three rollouts, so
that no pod ever meets a value sealed with a key it lacks: ``OLD,NEW`` (every pod can open
what NEW will seal), ``NEW,OLD`` (NEW seals), then ``reseal`` (every stored secret and
callback credential written anew with the newest key; safe while the relay runs, and to run
again) and ``status`` (nothing left sealed with an older key), then ``NEW`` alone. It talks
to Redis (``REDIS_URL``), as the workers do: the secrets of every tenant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from relay.admin import running
from relay.domain.crypto import PLAIN, SecretBox, fingerprint
from relay.settings import ConfigError, Settings
from relay.store.connection import connect
from relay.store.reseal import Resealer, Tally, keys_seen


def parser() -> argparse.ArgumentParser:
    """``clip-relay secrets``' arguments."""
    top = argparse.ArgumentParser(
        prog="clip-relay secrets",
        description="Rotating RELAY_SECRETS_KEY (REDIS_URL): what the stored secrets are"
        " sealed with, and sealing them anew with its newest (first) key.",
    )
    sub = top.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "status",
        help="count the stored secrets by the key that seals them (writes nothing)",
        description="Count every watch's stored webhook secrets and callback credentials:"
        " sealed with the newest key, with an older one, plain, or opened by no key of"
        " RELAY_SECRETS_KEY. Exit status 0 when all are sealed with the newest key, 3 when"
        " some are not, or when no watch is found (a REDIS_URL that is not the relay's).",
    )
    sub.add_parser(
        "reseal",
        help="seal every stored secret with the newest key (after putting a new key first)",
        description="Write every stored webhook secret and callback credential that is not"
        " sealed with the newest key of RELAY_SECRETS_KEY anew, sealed with it (a plain one,"
        " stored before any key was set, too). Values that no key opens are named and left"
        " as they are (exit status 3). Safe while the relay runs, and to run again. Refused"
        " (exit status 3, nothing written) while an API or worker seen in the last minute"
        " lacks the newest key: roll the key out to every one of them first.",
    )
    return top


def report(action: str, t: Tally, keys: list[str], redis_at: str) -> tuple[str, int]:
    """What to print after *action* found *t* (*keys*: the keys of RELAY_SECRETS_KEY,
    newest first, named by their fingerprints only; *redis_at*: which Redis, without its
    password), and the exit status: 3 when something
    is not sealed with the newest key (status), could not be (values no key opens), or no
    watch was found at all (status: a REDIS_URL that is not the relay's would say "all
    sealed")."""
    found = (
        f"{t.watches} watch{'' if t.watches == 1 else 'es'} in {redis_at}; their stored"
        f" secrets: {t.current} sealed with the newest key, {t.older} with an older one,"
        f" {t.plain} plain, {t.unreadable} that no key opens"
        f" ({len(keys)} key{'' if len(keys) == 1 else 's'} in RELAY_SECRETS_KEY, the newest"
        f" {fingerprint(keys[0])})"
    )
    lines = [("found " if action == "reseal" else "") + found]
    if action == "reseal":
        lines.append(f"sealed anew with the newest key: {t.written}")
        if t.changed:
            lines.append(
                f"left, changed since they were read (by the relay, another reseal, or"
                f" this one's own write sent again after a dropped connection): {t.changed};"
                " run `clip-relay secrets status` to check"
            )
    if t.unreadable:
        more = t.unreadable_watches - len(t.unreadable_in)
        lines.append(
            "no key of RELAY_SECRETS_KEY opens the secrets of: "
            + ", ".join(t.unreadable_in)
            + (f" and {more} more" if more > 0 else "")
            + " (put the key they were sealed with back in RELAY_SECRETS_KEY and reseal"
            " again; without it they cannot be opened: such a watch cannot sign or"
            " authenticate, and its owner must register it anew)"
        )
    left = t.unreadable
    if action == "status":
        if not t.watches:
            lines.append(
                "no watch found: if the relay has watches, REDIS_URL is not its Redis;"
                " keep every key until this finds them"
            )
            left += 1
        elif t.older + t.plain:
            lines.append("not all sealed with the newest key: run `clip-relay secrets reseal`")
            left += t.older + t.plain
        elif not t.unreadable:
            lines.append("all sealed with the newest key: older keys can be dropped")
    return "\n".join(lines), 3 if left else 0


def lacking(seen: list[list[str]], newest: str) -> str:
    """Of the key sets the API and worker processes said they hold (*seen*), those that
    do not seal with the key *newest* (a fingerprint: first in their set), as a sentence
    ('' when every one does)."""
    # (a process that holds it but seals with another key would go on sealing with that
    # one after the reseal: its values would not open once the older key is dropped)
    without = [held for held in seen if not held or held[0] != newest]
    if not without:
        return ""
    named = "; ".join(", ".join(held) or "no key" for held in without)
    return (
        f"{len(without)} of the {len(seen)} key sets the relay's processes hold (seen in"
        f" the last minute) lack the newest key {newest}, or do not seal with it: {named}."
        " Roll RELAY_SECRETS_KEY with it first out to every API and worker"
        " (docs/runbook.md, rotating the key), then reseal"
    )


async def run(action: str, settings: Settings) -> tuple[str, int]:
    """Do *action*; what to print and the exit status. A reseal first checks that every
    API and worker process seen in the last minute holds the newest key: it refuses
    (exit 3, nothing written) otherwise."""
    box = SecretBox(settings.secrets_key)
    keys = settings.secrets_key.split(",")
    redis = connect(settings.redis_url)
    try:
        missing = lacking(await keys_seen(redis), fingerprint(keys[0].strip()))
        if missing and action == "reseal":
            return "not resealed: " + missing, 3
        tally = await Resealer(redis, box).run(write=action == "reseal")
    finally:
        await redis.aclose()
    text, code = report(action, tally, keys, running.where(settings.redis_url))
    return (text + "\n" + missing, 3) if missing else (text, code)


def main(argv: Sequence[str], settings: Callable[[], Settings]) -> int:
    """``clip-relay secrets ...`` with the configuration *settings* loads; the exit
    status."""
    args = parser().parse_args(list(argv))

    def keyed() -> Settings:
        loaded = settings()
        if not loaded.secrets_key:
            raise ConfigError(
                "RELAY_SECRETS_KEY: not set (the keys to open and seal the stored secrets"
                " with, newest first)"
            )
        if loaded.secrets_key.split(",")[0].strip() == PLAIN:
            raise ConfigError(
                "RELAY_SECRETS_KEY: plain first seals nothing; run this with the key that"
                " seals first (the step after plain,KEY: KEY)"
            )
        return loaded

    again = (
        "some secrets may be sealed anew already: run `clip-relay secrets reseal` again"
        " (it carries on: what is sealed with the newest key is left)"
    )
    return running.run("secrets", args.action, run, keyed, hints={"reseal": again})
