"""``clip-relay upstream status|resume``: the upstream's 429 pause, for an operator.

A 429 from ScaleReach pauses every worker's upstream requests until its Retry-After (capped
at an hour) has passed. When the limit is lifted sooner (a plan upgraded, the provider's
word), ``resume`` ends the pause in Redis and tells every worker at once; the polls a
poller had put off to the pause's end are due now. It talks to Redis (``REDIS_URL``), as
the workers do, not to the API: the pause belongs to no tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeout

from relay.settings import ConfigError, Settings, url_passwords
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
    try:
        loaded = settings()
    except ConfigError as exc:
        print(f"clip-relay: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(run(args.action, loaded)))
    # (the URL is not echoed: it may hold a password)
    # reached, and refused (a wrong db index or password, an ACL, still loading its data)
    except (ResponseError, AuthenticationError, AuthorizationError, BusyLoadingError) as exc:
        return _failed(args.action, f"Redis error: {_reason(exc, loaded)}")
    except (RedisTimeout, TimeoutError) as exc:
        return _failed(args.action, f"no answer from Redis: {_reason(exc, loaded)}")
    except (RedisError, OSError) as exc:
        return _failed(args.action, f"cannot reach Redis: {_reason(exc, loaded)}")
    except KeyboardInterrupt:
        return _failed(args.action, "interrupted") + 129  # (130: the shell's for Ctrl-C)
    return 0


def _failed(action: str, why: str) -> int:
    """Say why *action* failed; exit status 1. A resume may have ended the pause and moved
    part of the put-off polls before it failed: running it again carries on."""
    print(f"clip-relay upstream: {why}", file=sys.stderr)
    if action == "resume":
        print(
            "the pause may have ended, and some put-off polls moved: run"
            " `clip-relay upstream resume` again (it carries on where it stopped)",
            file=sys.stderr,
        )
    return 1


def _reason(exc: BaseException, settings: Settings) -> str:
    """What went wrong talking to Redis: the error and its message (the address, the
    errno: redis-py says them; the URL's password never, should a message carry it)."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    # (a message has none of it; a short password would only blank out innocent digits)
    for password in url_passwords(settings.redis_url):
        if len(password) >= 6:
            text = text.replace(password, "***")
    return text
