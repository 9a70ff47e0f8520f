"""``clip-relay upstream status|resume``: the upstream's 429 pause, for an operator.

A 429 from ScaleReach pauses every worker's upstream requests until its Retry-After (capped
at an hour) has passed. When the limit is lifted sooner (a plan upgraded, the provider's
word), ``resume`` ends the pause in Redis and tells every worker at once; the polls a
poller had put off to the pause's end are due now. It talks to Redis (``REDIS_URL``), as
the workers do, not to the API: the pause belongs to no tenant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from relay.admin import running
from relay.settings import Settings
from relay.store.connection import connect
from relay.store.limits import Limits

SAFE_LEASE_S = 600.0  # above any RELAY_LEASE in use (default 25 s), when no worker says its


def parser() -> argparse.ArgumentParser:
    """``clip-relay upstream``'s arguments."""
    top = argparse.ArgumentParser(
        prog="clip-relay upstream",
        description="The upstream's 429 pause (REDIS_URL): how long it has left, or end it now.",
    )
    sub = top.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser(
        "status", help="how long the pause has left", description="How long the pause has left."
    )
    sub.add_parser(
        "resume",
        help="end the pause now for every worker (the limit was lifted sooner)",
        description="End the pause now: every worker is told at once, and the polls put"
        " off to its end are due now -- except those due within the workers' RELAY_LEASE (a"
        " poll claimed now has its lease there: moving it would give it to a second poller;"
        " 10 minutes when no running worker has said its lease), which keep their time. A"
        " new 429 pauses again.",
    )
    return top


def _for_people(ms: int) -> str:
    return str(timedelta(seconds=round(ms / 1000)))


async def run(action: str, settings: Settings) -> str:
    """Do *action*; what to print."""
    redis = connect(settings.redis_url)
    try:
        limits = Limits(redis)
        if action == "status":
            left = await limits.upstream_pause_left_ms()
            if not left:
                return "upstream not paused"
            until = datetime.now(UTC) + timedelta(milliseconds=left)
            return f"upstream paused: {_for_people(left)} left (until {until:%Y-%m-%dT%H:%M:%SZ})"
        # claims are held up to the workers' RELAY_LEASE from now, which this shell may not
        # have: the longest the workers say they hold (none said: 10 minutes) keeps clear
        # of them; this shell's own, if longer
        said = await limits.workers_lease_s()
        margin_s = max(settings.lease, SAFE_LEASE_S if said is None else said)
        left, moved = await limits.resume_upstream(margin_s)
        if not left:
            return "upstream was not paused"
        return (
            f"upstream pause ended ({_for_people(left)} were left); every worker told;"
            f" {moved} put-off polls due now (those due within"
            f" {_for_people(int(margin_s * 1000))} are left to their time: they may be"
            " claims held)"
        )
    finally:
        await redis.aclose()


def main(argv: Sequence[str], settings: Callable[[], Settings]) -> int:
    """``clip-relay upstream ...`` with the configuration *settings* loads; the exit
    status."""
    args = parser().parse_args(list(argv))
    # a resume may have ended the pause and moved part of the put-off polls before it
    # failed: running it again carries on
    again = (
        "the pause may have ended, and some put-off polls moved: run"
        " `clip-relay upstream resume` again (it carries on where it stopped)"
    )
    return running.run("upstream", args.action, run, settings, hints={"resume": again})
