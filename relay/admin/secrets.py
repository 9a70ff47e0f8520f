"""``clip-relay secrets status|reseal``: rotating RELAY_SECRETS_KEY, for an operator.

RELAY_SECRETS_KEY may hold several keys, comma-separated, newest first: the newest seals
what is stored from then on, every one of them opens. To rotate: put a new key first on
every API and worker pod (``NEW,OLD``), run ``reseal`` (every stored secret and callback
credential written anew with the newest key; safe to run while the relay runs, and again),
check with ``status`` that nothing is left sealed with an older key, then drop the old key.
It talks to Redis (``REDIS_URL``), as the workers do: the secrets of every tenant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from relay.admin import running
from relay.domain.crypto import SecretBox
from relay.settings import ConfigError, Settings
from relay.store.connection import connect
from relay.store.reseal import Resealer, Tally


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
        " some are not.",
    )
    sub.add_parser(
        "reseal",
        help="seal every stored secret with the newest key (after putting a new key first)",
        description="Write every stored webhook secret and callback credential that is not"
        " sealed with the newest key of RELAY_SECRETS_KEY anew, sealed with it (a plain one,"
        " stored before any key was set, too). Values that no key opens are named and left"
        " as they are (exit status 3). Safe while the relay runs, and to run again.",
    )
    return top


def report(action: str, t: Tally, keys: int) -> tuple[str, int]:
    """What to print after *action* found *t* (*keys*: the keys of RELAY_SECRETS_KEY), and
    the exit status: 3 when something is not sealed with the newest key (status) or could
    not be (reseal)."""
    found = (
        f"{t.watches} watch{'' if t.watches == 1 else 'es'}; their stored secrets:"
        f" {t.current} sealed with the newest key, {t.older} with an older one, {t.plain}"
        f" plain, {t.unreadable} that no key opens"
        f" ({keys} key{'' if keys == 1 else 's'} in RELAY_SECRETS_KEY)"
    )
    lines = [("found " if action == "reseal" else "") + found]
    if action == "reseal":
        lines.append(f"sealed anew with the newest key: {t.written}")
        if t.changed:
            lines.append(
                f"left, changed by the relay since they were read (written by it with the"
                f" key it has): {t.changed}; run `clip-relay secrets status` to check"
            )
    if t.unreadable:
        lines.append(
            "no key of RELAY_SECRETS_KEY opens the secrets of: "
            + ", ".join(t.unreadable_in)
            + (
                f" and {t.unreadable_watches - len(t.unreadable_in)} more"
                if t.unreadable_watches > len(t.unreadable_in)
                else ""
            )
            + " (add the key they were sealed with, or rotate their secrets)"
        )
    left = t.unreadable + (t.older + t.plain if action == "status" else t.changed)
    if action == "status" and t.older + t.plain:
        lines.append("not all sealed with the newest key: run `clip-relay secrets reseal`")
    elif action == "status" and not t.unreadable:
        lines.append("all sealed with the newest key: older keys can be dropped")
    return "\n".join(lines), 3 if left else 0


async def run(action: str, settings: Settings) -> tuple[str, int]:
    """Do *action*; what to print and the exit status."""
    box = SecretBox(settings.secrets_key)
    redis = connect(settings.redis_url)
    try:
        tally = await Resealer(redis, box).run(write=action == "reseal")
    finally:
        await redis.aclose()
    return report(action, tally, len(settings.secrets_key.split(",")))


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
        return loaded

    again = (
        "some secrets may be sealed anew already: run `clip-relay secrets reseal` again"
        " (it carries on: what is sealed with the newest key is left)"
    )
    return running.run("secrets", args.action, run, keyed, hints={"reseal": again})
