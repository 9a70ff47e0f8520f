"""``python -m relay.devtools.receiver``: the receiver's command line."""

from relay.devtools.receiver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
