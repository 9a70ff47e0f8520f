"""Connections to receivers: keep-alive per origin, made only to addresses the policy allows.

- one request at a time per connection, kept alive and reused per origin (scheme, host,
  port); idle connections are closed after ``idle_s`` and at most ``max_idle`` are kept;
  one older than ``max_age_s`` (the DNS cache's longest, 300 s) is not reused, so the next
  request resolves the name again (a receiver answering keep-alive kept every attempt on
  the address of its first connection however its name changed -- a tester's run,
  2026-12-07; the address used was still the one checked when it connected);
- the host is resolved by the policy's resolver (asynchronous, cached by the record's TTL:
  :mod:`relay.http.dns`) and only addresses the :class:`~relay.http.ssrf.CallbackPolicy`
  allows are connected to -- the address checked is the address used, so DNS rebinding
  gains nothing;
- ``https`` with the system's trust store (or a given context), hostname checked;
- a reused connection that the server had closed meanwhile (no byte of an answer came back)
  fails its request with :class:`Stale`, so that the client sends it once more on a new one.

:class:`ConnectionPool` is the base class of :class:`~relay.http.webhook.WebhookClient`, for the
same reason the parser is the connection's base class: the client's hot path reaches the pool
with no extra attribute lookup or call.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import time
from collections.abc import Callable

from relay.domain.origin import Origin
from relay.http.dns import MAX_TTL_S, NameNotResolved
from relay.http.ssrf import CallbackPolicy, CallbackRefused, SockAddr
from relay.http.wire import Answer, AnswerReader, Target, WebhookError
from relay.metrics import CALLBACK_CONNECTIONS

IDLE_S = 15.0  # an idle keep-alive connection is closed after this long
MAX_AGE_S = MAX_TTL_S  # a connection this old is not reused: its name is resolved again

Address = tuple[int, SockAddr]  # family, socket address


class Stale(Exception):
    """A reused connection turned out closed before anything came back."""


class Connection(AnswerReader, asyncio.Protocol):
    """One keep-alive connection; parses the answer to the one request in flight."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.born = 0.0  # monotonic, when it connected
        self.reused = False
        self.deadline = 0.0  # loop time by which the answer must be in
        self.on_lost: Callable[[Connection], None] | None = None  # (the pool's, while idle)

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.born = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:  # idle in the pool: it leaves it now
            forget, self.on_lost = self.on_lost, None
            forget(self)
        fut = self._answer
        if fut is None or fut.done():
            return
        if self._until_close():  # a body that runs until the connection closes
            return
        if self._got_bytes or not self.reused:
            fut.set_exception(WebhookError("http: connection closed before a full answer"))
        else:
            fut.set_exception(Stale())

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # nothing was asked: the connection is out of step
            return
        self._got_bytes = True
        try:
            self._feed(data)
        except WebhookError as exc:
            self._keep_alive = False
            if not self._answer.done():
                self._answer.set_exception(exc)
            self.close()

    # --- use --------------------------------------------------------------------------------

    def send(self, payload: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future resolves with its answer."""
        assert self.transport is not None
        self._reset()
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._answer

    @property
    def reusable(self) -> bool:
        """The last answer was read completely and the connection may carry another."""
        return not self.closed and self._keep_alive and not self._trailing

    def expire(self) -> None:
        """The request's time is up: a 2xx whose head is in is its answer (any 2xx within
        the timeout is success; the receiver said so, a body still coming changes nothing),
        with the body so far; anything else is a timeout. Closed either way."""
        fut = self._answer
        if fut is not None and not fut.done() and self._head_done and 200 <= self._status < 300:
            self._keep_alive = False
            fut.set_result(Answer(self._status, bytes(self._body[: self.keep]), self._retry_after))
            self.close()
        else:
            self.abort(TimeoutError())

    def abort(self, exc: Exception) -> None:
        """Fail the request in flight with *exc* and close."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        """Close the connection at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class ConnectionPool:
    """Idle keep-alive connections per origin, and new ones to checked addresses."""

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        ssl_context: ssl.SSLContext | None,
        keep: int,
        max_idle: int,
        idle_s: float,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.policy = policy
        self.keep = keep
        self.max_idle = max_idle
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._ssl = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._sweeping: asyncio.TimerHandle | None = None  # the next sweep while any is idle
        self.connections_made = 0  # for tests and metrics: new TCP connections

    @property
    def idle_connections(self) -> int:
        """Keep-alive connections waiting in the pool."""
        return self._idle_count

    def close_idle(self) -> None:
        """Close every idle connection."""
        idle = [conn for conns in self._idle.values() for conn in conns]
        self._idle.clear()
        self._idle_count = 0
        for conn in idle:
            conn.on_lost = None
            conn.close()
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None

    # --- the pool -----------------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> Connection | None:
        """A live idle connection to *origin*, if there is one."""
        now = time.monotonic()
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            conn.on_lost = None
            if not conns:  # (no empty list is kept: one per origin ever seen would pile up)
                del self._idle[origin]
            if not conn.closed and now - conn.idle_since < self.idle_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _release(self, origin: Origin, conn: Connection) -> None:
        now = time.monotonic()
        if (
            not conn.reusable
            or conn.closed
            or self._idle_count >= self.max_idle
            or now - conn.born >= self.max_age_s
        ):
            conn.close()
            return
        conn.idle_since = now
        self._idle.setdefault(origin, []).append(conn)
        self._idle_count += 1
        # a connection its receiver closes leaves the pool at once (before, it kept a place
        # till a sweep, and a pool full of them refused live ones: a review, 2026-12-06)
        conn.on_lost = lambda lost: self._forget(origin, lost)
        if self._sweeping is None:  # idle ones are closed after idle_s, traffic or not
            self._sweeping = asyncio.get_running_loop().call_later(self.idle_s, self._timed)

    def _forget(self, origin: Origin, conn: Connection) -> None:
        conns = self._idle.get(origin)
        if conns is not None and conn in conns:
            conns.remove(conn)
            self._idle_count -= 1
            if not conns:
                del self._idle[origin]

    def _timed(self) -> None:
        self._sweeping = None
        now = time.monotonic()
        self._sweep(now)
        if self._idle_count:  # next when the oldest one left is due: none outlives idle_s
            oldest = min(conn.idle_since for conns in self._idle.values() for conn in conns)
            due = max(oldest + self.idle_s - now, 0.01)
            self._sweeping = asyncio.get_running_loop().call_later(due, self._timed)

    def _sweep(self, now: float) -> None:
        for origin in list(self._idle):
            conns = self._idle[origin]
            live: list[Connection] = []
            for conn in conns:
                if not conn.closed and now - conn.idle_since < self.idle_s:
                    live.append(conn)
                else:
                    conn.on_lost = None
                    conn.close()
            self._idle_count -= len(conns) - len(live)
            if live:
                self._idle[origin] = live
            else:
                del self._idle[origin]

    # --- connecting -----------------------------------------------------------------------

    async def _connect_by(self, target: Target, deadline: float) -> Connection:
        async with asyncio.timeout_at(deadline):
            return await self._connect(target)

    async def _connect(self, target: Target) -> Connection:
        scheme, host, port = target.origin
        addresses = await self._resolve(host, port)
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl or _default_context()
        last: OSError | None = None
        for family, sockaddr in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: Connection(self.keep),
                    sockaddr[0],
                    sockaddr[1],
                    family=family,
                    ssl=context,
                    server_hostname=target.server_hostname if context else None,
                )
            except ssl.SSLCertVerificationError:
                raise WebhookError("tls: certificate rejected") from None
            except ssl.SSLError as exc:
                raise WebhookError(f"tls: {exc.reason or exc}"[:200]) from None
            except OSError as exc:
                last = exc
                continue
            self.connections_made += 1
            CALLBACK_CONNECTIONS.inc()
            return conn
        assert last is not None
        reason = os.strerror(last.errno) if last.errno else str(last)
        raise WebhookError(f"connect: {reason}"[:200])

    async def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            return await self.policy.resolve(host, port)
        except CallbackRefused as exc:
            raise WebhookError(f"refused: callback {exc}") from None
        except NameNotResolved as exc:
            raise WebhookError(str(exc)) from None
        except (OSError, UnicodeError):
            raise WebhookError("dns: host not resolved") from None


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's trust store, loaded once per process (on the first https callback)."""
    return ssl.create_default_context()
