"""``clip-relay``: one command for every process of the relay."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence

import structlog

from relay import __version__, logs
from relay.domain.crypto import PLAIN
from relay.settings import MIN_API_KEY, ConfigError, Settings, load, strays, url_passwords

COMMANDS = {
    "api": "run the registration API (aiohttp) on RELAY_HOST:RELAY_PORT",
    "worker": "run the arq worker: polling, clip fetching, deliveries, retries",
    "upstream-sim": "run a ScaleReach API simulator (with fault injection)",
    "receiver": "run a webhook receiver that verifies signatures and prints events",
    "demo": "run the whole stack on an embedded Redis, one watch round trip, then exit",
    "watches": "the operator CLI over the API: list, get, deliveries, redeliver, cancel, "
    "rotate-secret, ping, recover",
    "upstream": "the upstream's 429 pause (through REDIS_URL): status, or end it now (resume)",
    "secrets": "rotating RELAY_SECRETS_KEY (through REDIS_URL): status, or seal every stored"
    " secret with its newest key (reseal)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clip-relay",
        description="Webhook relay for the ScaleReach video-clipping API. "
        "Configuration comes from environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"clip-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(
            name, help=text, description=text, add_help=name in ("api", "worker", "demo")
        )
    return parser


def _settings(command: str) -> Settings:
    settings = load()
    if command == "api":
        settings.require_api()
    if command == "worker":
        settings.require_worker()
    logs.setup(settings.log_format)
    logs.register_secrets([settings.scalereach_api_key, settings.ui_secret])
    logs.register_secrets(settings.secrets_key.split(","))  # (each key of a rotation)
    logs.register_secrets(url_passwords(settings.redis_url))
    logs.register_secrets(k.key for k in settings.api_keys)
    if unknown := strays():  # (a misspelt name would be a setting silently left default)
        structlog.get_logger("relay.cli").warning("not a setting: ignored", variables=unknown)
    if command in ("api", "worker") and not settings.secrets_key:
        # (a Secret re-created without it starts every pod fine: say so, each start)
        structlog.get_logger("relay.cli").warning(
            "RELAY_SECRETS_KEY is not set: webhook secrets and callback credentials are kept"
            " in Redis in plain text, and those sealed before cannot be opened"
        )
    elif command in ("api", "worker") and settings.secrets_key.split(",")[0].strip() == PLAIN:
        structlog.get_logger("relay.cli").warning(
            "RELAY_SECRETS_KEY starts with plain: new webhook secrets and callback credentials"
            " are kept in Redis in plain text (the first step of a first key: the key alone"
            " next, docs/runbook.md)"
        )
    if command == "api" and settings.ui_secret and len(settings.ui_secret) < MIN_API_KEY:
        structlog.get_logger("relay.cli").warning(
            "RELAY_UI_SECRET is short enough to guess: dashboard sessions could be forged;"
            " use a long random one",
            shorter_than=MIN_API_KEY,
        )
    if command in ("api", "worker") and any(
        n.prefixlen == 0 for n in settings.callback_allow.networks
    ):
        structlog.get_logger("relay.cli").warning(
            "RELAY_CALLBACK_ALLOW opens every address: callbacks may reach any private or"
            " internal service (the SSRF rules are off); list the networks receivers need"
        )
    if command == "api" and (odd := settings.odd_tenant_names()):
        structlog.get_logger("relay.cli").warning(
            "tenant names other than letters, digits, '.', '_' and '-' (64 at most): they"
            " work, but name Redis keys, log fields and pages; prefer plain ones for new tenants",
            tenants=odd,
        )
    if command == "api" and (short := settings.short_api_keys()):
        # (the tenants are named, never the keys)
        structlog.get_logger("relay.cli").warning(
            "api keys short enough to guess: use long random ones",
            tenants=short,
            shorter_than=MIN_API_KEY,
        )
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clip-relay`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "watches":  # the operator CLI: the SDK, none of the server
        from relay.ops_cli import main as watches

        return watches(argv[1:])
    if argv and argv[0] == "upstream":
        from relay.admin.upstream import main as upstream

        return upstream(argv[1:], lambda: _settings("upstream"))
    if argv and argv[0] == "secrets":
        from relay.admin.secrets import main as secrets

        return secrets(argv[1:], lambda: _settings("secrets"))
    if argv and argv[0] in ("upstream-sim", "receiver"):
        # tools with their own options
        try:
            if argv[0] == "upstream-sim":
                from relay.devtools import upstream_sim

                return upstream_sim.main(argv[1:])
            from relay.devtools import receiver

            return receiver.main(argv[1:])
        except OSError as exc:  # its --host/--port: one line, as for the api and the worker
            why = _cannot_listen(exc, "--host", "--port")
            if why is None:
                raise
            print(f"clip-relay {argv[0]}: cannot listen: {why}", file=sys.stderr)
            return 1
    args = _parser().parse_args(argv)
    if args.command == "demo":  # (its processes get an environment of its own: not this one)
        from relay.devtools.demo import run_demo

        return run_demo()
    try:
        settings = _settings(args.command)
    except ConfigError as exc:
        print(f"clip-relay: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command in ("api", "worker") and (clash := _keys_clash(settings)):
        print(f"clip-relay: configuration error: {clash}", file=sys.stderr)
        return 2
    try:
        if args.command == "api":
            from relay.api.serving import run_api

            return run_api(settings)
        from workers.worker import run

        return run(settings)
    except OSError as exc:  # the address to listen on: one line, as a configuration error is
        why = _cannot_listen(exc)
        if why is None:
            raise
        port = settings.port if args.command == "api" else settings.metrics_port
        print(
            f"clip-relay {args.command}: cannot listen on {settings.host}:{port}: {why}",
            file=sys.stderr,
        )
        # a RELAY_HOST that is no address of this host is a bad value (exit 2, as every
        # other); a port in use or refused is the host's state (exit 1)
        bad_host = exc.errno == errno.EADDRNOTAVAIL or (
            isinstance(exc, socket.gaierror) and exc.errno != socket.EAI_AGAIN  # (DNS away)
        )
        return 2 if bad_host else 1


def _keys_clash(settings: Settings) -> str | None:
    """Why this process must not start (None: it may): the key it would seal with is not
    held by processes running now (``cr:keys:seen``), which could not open what it stores
    -- a key list with a new key first before it was rolled out second, a first key before
    plain,KEY, or an unrelated key (a tester's run: one such API's secrets failed every
    later ping and delivery); or it lacks the key they seal with, and could not open what
    they store (no key, or an old one only: a review). Redis away: nothing to compare (the
    process waits for it, as ever)."""
    import asyncio

    from relay.domain.crypto import held
    from relay.store.connection import connect
    from relay.store.reseal import cannot_open, cannot_open_theirs, keys_seen

    async def seen() -> list[list[str]]:
        redis = connect(settings.redis_url, timeout=2.0)
        try:
            async with asyncio.timeout(3.0):
                return await keys_seen(redis)
        finally:
            await redis.aclose()

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        others = asyncio.run(seen())
    except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError):
        return None  # Redis away
    except Exception as exc:  # (Redis answered with an error: said, not taken for "away")
        structlog.get_logger("relay.cli").warning(
            "could not compare RELAY_SECRETS_KEY with the keys of the processes running",
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        return None
    mine = held(settings.secrets_key)
    if lacking := cannot_open(mine, others):
        theirs = "; ".join(",".join(keys) or "no key" for keys in lacking)
        return (
            f"RELAY_SECRETS_KEY seals with the key {mine.split(',')[0]} (its fingerprint),"
            f" which processes seen in the last minute do not hold (their keys, newest first:"
            f" {theirs}): they could not open what this one stores. Add it to theirs second"
            " first, or give those without a key plain,KEY first (docs/runbook.md, rotating"
            " RELAY_SECRETS_KEY); a process stopped less than a minute ago still counts"
        )
    if theirs_sealed := cannot_open_theirs(mine, others):
        return (
            f"processes seen in the last minute seal with the key {', '.join(theirs_sealed)}"
            " (its fingerprint), which this one's RELAY_SECRETS_KEY "
            + ("does not hold" if settings.secrets_key else "is not set to")
            + ": it could not open what they store. Give it that key (first to seal with it,"
            " or second to open only: docs/runbook.md, rotating RELAY_SECRETS_KEY); a process"
            " stopped less than a minute ago still counts"
        )
    return None


def _cannot_listen(
    exc: OSError, host: str = "RELAY_HOST", port: str = "RELAY_PORT and RELAY_METRICS_PORT"
) -> str | None:
    """What to say when binding the listening socket failed (None: not that); *host* and
    *port* name the settings that choose them."""
    if isinstance(exc, socket.gaierror):
        return f"{exc.strerror} ({host} must be an address or name of this host)"
    if exc.errno == errno.EADDRINUSE:
        return f"{exc.strerror} (each process on a host needs its own {port})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{exc.strerror} ({host} must be an address of this host)"
    if exc.errno == errno.EACCES:
        return f"{exc.strerror} (a port below 1024 needs privileges)"
    return None


if __name__ == "__main__":
    sys.exit(main())
