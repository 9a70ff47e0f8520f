"""``clip-relay receiver``: a Standard Webhooks receiver for demos, tests and benchmarks.

Every ``POST`` on any path is a delivery: its signature is checked against the configured
secrets (400 ``application/problem+json`` when it does not verify, and the request is not
recorded), then it is recorded and answered - ``204`` by default, or the next status of a
script set for that path (to make the relay retry, back off or disable a watch).

Control routes (loopback tooling, no authentication):

- ``GET /_events`` -> ``{"events": [...], "unique": n, "duplicates": n}``
- ``DELETE /_events`` -> 204, forgets every recorded event
- ``POST /_script`` ``{"path": "/hooks/a", "codes": [500, 200], "delay": 0, "retryAfter": null}``
  -> 204
- ``POST /_secrets`` ``{"secret": "whsec_..."}`` -> 204 (accept one more secret at run time)

Verification of one request is a few HMACs over keys decoded once, so the receiver keeps up
with a benchmark's fan-out; printing only happens when a printer is given.

One module per job: :mod:`.recorder` (the :class:`Receiver`: secrets, recorded deliveries,
scripts, waiters), :mod:`.app` (the aiohttp application around it), :mod:`.render` (an event
as text for people), :mod:`.cli` (the command, also ``python -m relay.devtools.receiver``).
"""

from __future__ import annotations

from relay.devtools.receiver.app import RECEIVER_KEY, create_app
from relay.devtools.receiver.cli import main
from relay.devtools.receiver.recorder import ReceivedEvent, Receiver
from relay.devtools.receiver.render import format_event

__all__ = [
    "RECEIVER_KEY",
    "ReceivedEvent",
    "Receiver",
    "create_app",
    "format_event",
    "main",
]
