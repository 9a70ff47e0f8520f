"""``clip-relay upstream-sim``: the simulator's command line."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from relay.devtools.upstream_sim.app import run


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--host --port --api-key --url-ttl``; the key may come from the env."""
    parser = argparse.ArgumentParser(
        prog="clip-relay upstream-sim", description="ScaleReach API simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SCALEREACH_API_KEY"),
        help="Bearer key to accept (default: $SCALEREACH_API_KEY)",
    )
    parser.add_argument("--url-ttl", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if not args.api_key:
        print(
            "upstream-sim: an API key is required (--api-key or SCALEREACH_API_KEY)",
            file=sys.stderr,
        )
        return 2
    if not math.isfinite(args.url_ttl) or args.url_ttl <= 0:
        print("upstream-sim: --url-ttl must be a positive number", file=sys.stderr)
        return 2
    run(args.host, args.port, args.api_key, url_ttl=args.url_ttl)
    return 0
