"""One c-ares channel per lookup, driven by the running event loop (:mod:`relay.http.dns`).

Why not one shared channel (as ``aiodns.DNSResolver`` is used): c-ares (1.22 and later) times
each try by what the server has shown -- five times its mean answer time, 250 ms at least,
doubled at each retry; the configured timeout only until the server has answered three
queries. A resolver that answers its cached names in a millisecond then gets 250 ms and
500 ms for a name it must ask elsewhere: on a shared channel, a name whose lookup took over
~0.6 s never resolved (a tester's run, 2026-12-07: 2,000 names behind a 1 s server, none
delivered in 150 s). A new channel has no past, so every lookup gets the configured timeout.

Why not one ``aiodns.DNSResolver`` per lookup: pycares 5 gives each channel made without a
socket callback a thread of its own and an inotify instance (to follow ``resolv.conf``); the
system allows 128 inotify instances per user, and 64 lookups may be in flight. Here the
channel reports its sockets to this loop instead (pycares' ``sock_state_cb``): no thread of
its own (pycares destroys closed channels on one shared thread), no inotify, made once per
name per TTL (the resolver caches). :meth:`Lookup.close` closes it: the channel and the
callback refer to each other, so without it the C side of each (~8 KB) waited for the
garbage collector's slowest pass (a review, 2026-12-07).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import pycares
from aiodns.error import DNSError

TICK_S = 0.1  # c-ares' timers are run this often at least while a query is out


class Lookup:
    """A channel for one ``getaddrinfo``; :meth:`close` (always) ends anything left of it."""

    def __init__(self, servers: Sequence[str], timeout_s: float, tries: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fds: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._channel = pycares.Channel(
            sock_state_cb=self._socket,
            timeout=timeout_s,
            tries=tries,
            servers=list(servers) or None,
        )

    async def getaddrinfo(self, name: str) -> Any:
        """The answer (``.nodes``: family, address, TTL) for *name* (both families, as the
        system does: ``/etc/hosts`` first); :class:`aiodns.error.DNSError` when none."""
        done: asyncio.Future[Any] = self._loop.create_future()

        def answered(result: Any, error: int | None) -> None:
            if done.done():
                return
            if error:
                done.set_exception(DNSError(error, pycares.errno.strerror(error)))
            else:
                done.set_result(result)

        self._channel.getaddrinfo(
            name, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, callback=answered
        )
        return await done

    def close(self) -> None:
        """Stop watching its sockets and cancel what is still out (no query of it is sent
        after this: a lookup its caller gave up on sends no more tries)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in self._fds:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._fds.clear()
        if not self._closed:
            self._closed = True
            self._channel.cancel()  # (answers what is out: ECANCELLED, to a done future)
            self._channel.close()  # (destroyed on pycares' thread, which may call _socket)

    def _socket(self, fd: int, readable: bool, writable: bool) -> None:
        """c-ares says which of its sockets to watch (both False: closed)."""
        if self._closed:  # (closing: the fds are unwatched already, maybe off this thread)
            return
        loop = self._loop
        if fd in self._fds:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            self._fds.discard(fd)
        if readable or writable:
            if readable:
                loop.add_reader(fd, self._process, fd, pycares.ARES_SOCKET_BAD)
            if writable:
                loop.add_writer(fd, self._process, pycares.ARES_SOCKET_BAD, fd)
            self._fds.add(fd)
            if self._timer is None:
                self._timer = loop.call_later(TICK_S, self._tick)

    def _process(self, read_fd: int, write_fd: int) -> None:
        """Let c-ares read or write a socket (or, both ARES_SOCKET_BAD, run its timers). A
        callback the loop had ready when the lookup closed finds the channel gone: nothing."""
        if not self._closed:
            self._channel.process_fd(read_fd, write_fd)

    def _tick(self) -> None:
        """Run c-ares' timers (a try timed out: the next one, or the end). A socket opened
        meanwhile may have started the next tick already (``_socket``): one runs at a time,
        and :meth:`close` cancels it (before, a second one outlived the channel)."""
        self._timer = None
        self._process(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        if self._fds and self._timer is None and not self._closed:
            self._timer = self._loop.call_later(TICK_S, self._tick)
