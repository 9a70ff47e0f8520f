"""News every worker should hear at once, without asking: Redis pub/sub channels.

A feed is a subscription (one connection of the pool while it is open). What comes on it is
a hint that saves a wait, never the state itself: a message missed while a connection was
lost costs only that wait (the state is in Redis keys, read at the next round trip).

- ``cr:up:paused``: each new 429 pause's length in ms (``pause_upstream.lua`` publishes it):
  a worker holding tokens of this second waits too;
- ``cr:circuits:close``: a redelivery or recovery was started (the origin tag of the
  redelivered watch's callback, or ``*``): the workers close those origins' circuits, so
  the attempts an operator asked for are sent, not recorded ``circuit open``.
"""

from __future__ import annotations

from types import TracebackType

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from relay import constants as c

ALL_ORIGINS = "*"


class Feed:
    """``async with Feed(redis, channel) as feed: message = await feed.next(within=1.0)``."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.channel = channel
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=True)

    async def __aenter__(self) -> Feed:
        await self._pubsub.subscribe(self.channel)
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


def circuit_feed(redis: Redis) -> Feed:
    """The redeliveries and recoveries started: origin tags whose circuits to close."""
    return Feed(redis, c.CIRCUIT_CLOSE_CHANNEL)


async def close_circuits(redis: Redis, origin_tag: str = ALL_ORIGINS) -> None:
    """Tell every worker to close the circuit of *origin_tag* (:data:`ALL_ORIGINS`: all)."""
    await redis.publish(c.CIRCUIT_CLOSE_CHANNEL, origin_tag)
