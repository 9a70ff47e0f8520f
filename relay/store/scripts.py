"""The Lua scripts, read by name from ``commands/<name>.lua`` and registered on a connection.

Every state change that must be atomic across API and worker replicas is one script, kept as
a ``.lua`` file (as BullMQ keeps its ``commands/*.lua``) whose header comment documents its
KEYS and ARGV; the Python wrappers live in the store's aggregates (:mod:`relay.store.watches`,
:mod:`relay.store.videos`, :mod:`relay.store.deliveries`, :mod:`relay.store.limits`).
Each script is small and does one transition. Per-item work is as few calls as the transition
allows; schedule changes and status counters are applied once per call. Lua's ``unpack``
takes at most ~8,000 values, so callers keep batches well below that (:data:`SCRIPT_BATCH`).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

SCRIPT_BATCH = 1000  # items per script call, at most (Lua's unpack limit, see above)
# watches per call of the delivery's scripts (finalize, claim_due, settle) as the worker sends
# them: ~0.2 ms of an idle Redis on the 2-core machine; calls of 50 went over 1 ms about
# twice as often while the machine was busy (docs/performance.md, "Batches of 32")
DELIVERY_BATCH = 32


@cache
def source(name: str) -> str:
    """The text of the script *name* (``commands/<name>.lua``, shipped as package data)."""
    return (files(__package__ or "relay.store") / "commands" / f"{name}.lua").read_text("utf-8")


def register(redis: Redis, name: str) -> AsyncScript:
    """The script *name*, callable on *redis* (EVALSHA, loading it once if Redis lacks it)."""
    return redis.register_script(source(name))
