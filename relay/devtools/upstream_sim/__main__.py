"""``python -m relay.devtools.upstream_sim``: the simulator's command line."""

from relay.devtools.upstream_sim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
