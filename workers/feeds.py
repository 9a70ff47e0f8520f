"""Following a Redis feed (:mod:`relay.store.feeds`) for as long as a worker runs: subscribe,
hand each message on, subscribe again after a lost connection. A message that comes while
the connection is down is missed: feeds carry hints that save a wait, never state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.exceptions import RedisError

from relay import logs
from relay.store.feeds import Feed

log = logs.get("workers.feeds")
RETRY_S = 1.0  # after a feed's connection is lost
WAIT_S = 1.0  # one wait for a message: a stop is seen within this


class Follower:
    """``await follower.run()`` hands each message of ``open_feed()`` to *on_message* until
    :meth:`stop`."""

    def __init__(
        self, open_feed: Callable[[], Feed], on_message: Callable[[str], None], what: str
    ) -> None:
        self._open = open_feed
        self._on_message = on_message
        self.what = what
        self._running = False

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Follow the feed; *ready* is set once subscribed (again after each reconnect)."""
        self._running = True
        while self._running:
            try:
                async with self._open() as feed:
                    if ready is not None:
                        ready.set()
                    while self._running:
                        message = await feed.next(within=WAIT_S)
                        if message is not None:
                            self._on_message(message)
            except (RedisError, OSError) as exc:
                log.warning(
                    "feed lost; subscribing again", feed=self.what, error=type(exc).__name__
                )
                await asyncio.sleep(RETRY_S)

    def stop(self) -> None:
        """End :meth:`run` (within :data:`WAIT_S`)."""
        self._running = False
