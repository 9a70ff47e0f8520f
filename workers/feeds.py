"""Following a Redis feed (:mod:`relay.store.feeds`) for as long as a worker runs: subscribe,
catch up on what was missed, hand each message on, subscribe again after a lost connection.
A message that cannot be handled is logged and skipped: the feed goes on.

The catch-up also runs every :data:`CATCH_UP_S` while subscribed: redis-py re-subscribes by
itself after a short drop of the connection (its retries), and a message sent in that gap
would otherwise be missed unseen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from relay import logs
from relay.logs import Every
from relay.store.feeds import Feed

log = logs.get("workers.feeds")
RETRY_S = 1.0  # after a feed's connection is lost
WAIT_S = 1.0  # one wait for a message (a stop ends it at once)
CATCH_UP_S = 10.0  # the catch-up's period while subscribed
LOST_LOG_S = 60.0  # between two "feed lost" lines while Redis stays away


class Follower:
    """``await follower.run()`` hands each message of ``open_feed()`` to *on_message* until
    :meth:`stop`; *on_subscribed* (if any) runs after each subscription, before any message
    (what was missed while there was none), and every :data:`CATCH_UP_S`."""

    def __init__(
        self,
        open_feed: Callable[[], Feed],
        on_message: Callable[[str], None],
        what: str,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._open = open_feed
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self.what = what
        self._running = False
        self._read: asyncio.Future[str | None] | None = None  # the wait for a message

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Follow the feed; *ready* is set once subscribed (again after each reconnect)."""
        self._running = True
        lost = 0  # subscriptions failed in a row
        lost_log = Every(LOST_LOG_S)
        while self._running:
            try:
                async with self._open() as feed:
                    lost = 0
                    lost_log.reset()
                    caught_up = time.monotonic()
                    if self._on_subscribed is not None:
                        await self._on_subscribed()
                    if ready is not None:
                        ready.set()
                    while self._running:
                        message = await self._next(feed)
                        if message is not None:
                            self._handle(message)
                        if (
                            self._on_subscribed is not None
                            and time.monotonic() - caught_up >= CATCH_UP_S
                        ):
                            caught_up = time.monotonic()
                            await self._on_subscribed()
            except (RedisError, OSError) as exc:
                lost += 1
                if lost_log.due():  # at the first loss, then once a minute while it lasts
                    log.warning(
                        "feed lost; subscribing again",
                        feed=self.what,
                        error=type(exc).__name__,
                        tries=lost,
                    )
                await asyncio.sleep(RETRY_S)

    async def _next(self, feed: Feed) -> str | None:
        """The next message (None: none within WAIT_S, or stopped). A stop cancels the wait:
        before, every worker's shutdown waited out a second per feed (and the test suite
        two minutes in all)."""
        self._read = read = asyncio.ensure_future(feed.next(within=WAIT_S))
        try:
            return await read
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._running or not read.cancelled() or (me is not None and me.cancelling()):
                raise  # (this task itself was cancelled -- also beside a stop -- not the wait)
            return None
        finally:
            self._read = None

    def _handle(self, message: str) -> None:
        try:
            self._on_message(message)
        except Exception as exc:
            log.error("feed message skipped", feed=self.what, message=message[:64], error=repr(exc))

    def stop(self) -> None:
        """End :meth:`run`: at once when it waits for a message, else after what it does."""
        self._running = False
        if self._read is not None:
            self._read.cancel()
