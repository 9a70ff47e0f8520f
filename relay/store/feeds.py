"""News every worker should hear at once, without asking: Redis pub/sub channels.

A feed is a subscription (one connection of the pool while it is open). A message is
missed while a worker's feed reconnects; each channel says what covers that gap:

- ``cr:up:paused``: each new 429 pause's length in ms (``pause_upstream.lua`` publishes
  it), so a worker holding tokens of this second waits too. Missed: the worker learns of
  the pause at its next round trip for tokens (the pause key, ``cr:up:pause``).
- ``cr:circuits:close``: an operator's redeliver (the origin tag of its watch's callback)
  or recover (the origin tags of the watches it puts back, one message each) is about to
  start: the workers close those origins' circuits, so the attempts asked for are sent, not
  recorded ``circuit open``. (``*``, every origin, is what a recover of an older version
  sent.) Missed: each close is also
  recorded for ten minutes (``cr:circuits:closed``), and a worker reads the closes it
  missed each time it subscribes again (:meth:`Circuits.closed_since`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub

from relay import constants as c
from relay.store import scripts

ALL_ORIGINS = "*"
CLOSES_KEPT_MS = 600_000  # how long a circuit close is recorded for reconnecting workers


class Feed:
    """``async with Feed(redis, channel) as feed: message = await feed.next(within=1.0)``."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.channel = channel
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self) -> Feed:
        try:
            await self._pubsub.subscribe(self.channel)
        except BaseException:  # the connection it took goes back to the pool
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def next(self, within: float) -> str | None:
        """The next message, or None when none came *within* seconds."""
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=within)
        if message is None:
            return None
        data = message["data"]
        return data.decode() if isinstance(data, bytes) else str(data)


class Circuits:
    """``store.circuits``: the circuit closes an operator's redeliver or recover asks of
    every worker."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._close = scripts.register(redis, "close_circuits")

    async def close(self, origin_tags: Iterable[str], pipe: Pipeline | None = None) -> None:
        """Tell every worker to close the circuits of *origin_tags* (:data:`ALL_ORIGINS`:
        all), now and, for a worker whose feed is reconnecting, once it is back; nothing
        when there is no tag. With *pipe*, as one of its commands."""
        if isinstance(origin_tags, str):  # (one tag given bare would close one per character)
            raise TypeError("origin_tags is a collection of tags, not one tag")
        tags = sorted(set(origin_tags))
        if tags:
            await self._close(
                keys=[c.CIRCUIT_CLOSES_KEY],
                args=[CLOSES_KEPT_MS, c.CIRCUIT_CLOSE_CHANNEL, *tags],
                client=pipe,
            )

    def feed(self) -> Feed:
        """The closes as they are asked (origin tags, or ``*``)."""
        return Feed(self.redis, c.CIRCUIT_CLOSE_CHANNEL)

    async def closed_since(self, since_ms: int | None) -> tuple[list[str], int]:
        """The origin tags closed after *since_ms* (Redis' ms; None: none asked) within the
        last ten minutes, and Redis' ms now (the next call's *since_ms*)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrangebyscore(c.CIRCUIT_CLOSES_KEY, f"({since_ms or 0}", "+inf")
        pipe.time()
        tags, (seconds, micros) = await pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        return (list(tags) if since_ms is not None else []), now
