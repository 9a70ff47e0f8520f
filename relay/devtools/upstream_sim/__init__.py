"""A ScaleReach API simulator: the status and clips endpoints, signed CDN links, fault injection.

The simulator keeps everything in memory and reproduces the upstream's quirks described in
``UPSTREAM.md``: ``job`` turning ``null`` some time after the video finished, the video turning
``completed`` before its clips are rendered (``detected`` -> ``generating`` -> final, with
``downloadUrl: null`` meanwhile), signed links that expire, ``hooks``/``emotions`` given as
objects or lists, and a ``count`` that need not equal ``len(clips)``.

Time comes from an injectable ``clock`` (default :func:`time.time`) so tests can move it.

One module per job:

- :mod:`.app` -- the aiohttp application: public endpoints (Bearer auth), routes, serving;
- :mod:`.control` -- the control API under ``/_sim`` (videos, status switches, faults, stats);
- :mod:`.faults` -- what an injected fault does to the request it matches;
- :mod:`.cdn` -- signed, expiring CDN links and the files behind them;
- :mod:`.videos` -- simulated videos built from the control bodies, default clips;
- :mod:`.views` -- the status, clips and internal documents of a video at a given time;
- :mod:`.state` -- what the simulator holds (:class:`SimState`, ``app[STATE]``);
- :mod:`.jsonio` -- JSON responses, control bodies and their checked fields;
- :mod:`.cli` -- ``clip-relay upstream-sim`` (also ``python -m relay.devtools.upstream_sim``).
"""

from __future__ import annotations

from relay.devtools.upstream_sim.app import create_app, run
from relay.devtools.upstream_sim.cli import main
from relay.devtools.upstream_sim.state import STATE, SimState

__all__ = ["STATE", "SimState", "create_app", "main", "run"]
