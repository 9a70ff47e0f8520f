"""``clip-relay receiver``: serve the receiver and print each verified delivery."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from relay.devtools.receiver.app import create_app
from relay.devtools.receiver.recorder import ReceivedEvent, Receiver
from relay.devtools.receiver.render import format_event

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8099
SECRETS_ENV: Final = "RECEIVER_SECRETS"


def _print_event(ev: ReceivedEvent) -> None:
    print(format_event(ev), flush=True)


def _print_rejected(path: str, reason: str) -> None:
    print(f"rejected POST {path}: {reason}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``clip-relay receiver`` until interrupted: verify and print each delivery.

    ``--secret`` may be repeated; without it, the comma-separated ``RECEIVER_SECRETS``
    environment variable is used. Returns the process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="clip-relay receiver",
        description="Receive Standard Webhooks, verify their signatures and print each event.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default %(default)s")
    parser.add_argument(
        "--secret",
        action="append",
        default=None,
        help=f"accepted whsec_ secret (repeatable; default: ${SECRETS_ENV}, comma-separated)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="record and print deliveries without checking their signatures",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the events")
    args = parser.parse_args(argv)

    if args.secret is not None:
        secrets = [s.strip() for s in args.secret if s.strip()]
    else:
        secrets = [s.strip() for s in os.environ.get(SECRETS_ENV, "").split(",") if s.strip()]
    try:
        receiver = Receiver(
            secrets,
            printer=None if args.quiet else _print_event,
            on_reject=None if args.quiet else _print_rejected,
            verify_signatures=not args.no_verify,
        )
    except ValueError as exc:
        print(f"clip-relay receiver: {exc}", file=sys.stderr)
        return 2
    if receiver.verify_signatures and not receiver.has_secrets:
        print(
            "clip-relay receiver: no secret given; deliveries get 400 until one is added "
            "with POST /_secrets",
            file=sys.stderr,
        )
    line = f"clip-relay receiver listening on http://{args.host}:{args.port}/"
    web.run_app(  # (the line once it listens: not before a port in use fails it)
        create_app(receiver),
        host=args.host,
        port=args.port,
        print=lambda _: print(line, flush=True),
    )
    return 0
