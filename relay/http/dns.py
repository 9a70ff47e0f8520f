"""Name resolution for callback hosts that cannot stall the relay.

The standard library resolves through ``getaddrinfo`` in the event loop's default thread
pool: a handful of threads shared by every origin, so one tenant's slow DNS server held
resolution up for all, and a name that does not resolve was asked again on every attempt.
Here resolution is asynchronous (c-ares, through ``pycares``: no threads; ``/etc/hosts`` is
read as the system does) with:

- a bound on lookups in flight (``max_inflight``), each with its own deadline, and a share
  of them per zone (``MAX_PER_ZONE``: names of one registered domain, roughly -- see
  :func:`zone`), so names whose servers stall -- one tenant's many subdomains -- hold a few
  slots, never every one;
- a bound on the wait for a slot (``SLOT_WAIT_S``): past it the attempt fails as "resolver
  busy", which says nothing of its origin (no circuit counts it, no negative entry);
- one lookup per name at a time (the callers of a name in flight wait for its answer); one
  that no caller waits for any more is dropped before it takes a slot;
- a positive cache for the record's TTL, clamped to ``[MIN_TTL_S, MAX_TTL_S]``;
- a negative cache of ``NEGATIVE_TTL_S`` for names that do not resolve (and for lookups that
  time out), so a dead name costs one lookup per ten seconds, not one per attempt;
- ``RELAY_DNS_SERVERS`` (``ip[:port]``, comma-separated) instead of the system's servers;
- a channel of its own per lookup (:mod:`relay.http.cares`): each try is given the
  configured 2 s (``LOOKUP_TIMEOUT_S``; c-ares doubles it for the second), not a timeout
  c-ares would shorten from the server's past answers (on a shared channel a name a fast
  resolver took over ~0.6 s for never resolved); two tries within ``LOOKUP_GUARD_S``
  (5 s), after which the channel is closed and nothing more is sent.

The cache is bounded (``max_names``, oldest entry out first). c-ares keeps no answer between
lookups (their channels are gone), so the clamp holds for long TTLs too. What the
caller connects to is exactly what this returns, so the SSRF rule (the address checked is
the address used) holds (:meth:`relay.http.ssrf.CallbackPolicy.resolve`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiodns.error import ARES_ETIMEOUT, DNSError

from relay.http.cares import Lookup
from relay.metrics import DNS_LOOKUPS

MIN_TTL_S = 30.0
MAX_TTL_S = 300.0
NEGATIVE_TTL_S = 10.0
LOOKUP_TIMEOUT_S = 2.0  # c-ares' timer for a lookup's first try (doubled for the second)
LOOKUP_TRIES = 2
LOOKUP_GUARD_S = 5.0  # a lookup ends by then, whatever c-ares' timers
MAX_INFLIGHT = 64
MAX_PER_ZONE = 8  # lookups in flight per zone (see zone()), at most
SLOT_WAIT_S = 2.0  # a lookup waits this long for a slot, at most
MAX_NAMES = 10_000

# (family, ip) pairs: the port is the caller's
Resolved = list[tuple[int, str]]


class NameNotResolved(OSError):
    """The name has no address (or its lookup failed or timed out)."""


class ResolverBusy(NameNotResolved):
    """No lookup slot came free in time: nothing is known of the name (not cached)."""


# second-level labels that, under a two-letter country code, are a public suffix of their
# own (co.uk, com.au, ne.jp, ...): a zone there is three labels
_SECOND_LEVEL = frozenset(("ac", "co", "com", "edu", "gov", "go", "ne", "net", "or", "org"))


def zone(name: str) -> str:
    """The share of lookup slots a name draws on: the domain a tenant registers, roughly --
    its last two labels (``a.b.example.com`` -> ``example.com``), three under a common
    country-code suffix (``a.example.co.uk`` -> ``example.co.uk``). A rarer public suffix
    is shared by its names, which bounds one tenant's subdomains all the same."""
    labels = name.rsplit(".", 3)
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


@dataclass(slots=True)
class _Entry:
    expires: float
    addresses: Resolved | None  # None: a negative entry
    reason: str = ""


class Resolver:
    """Resolves host names to addresses, asynchronously and cached (see the module)."""

    def __init__(
        self,
        servers: Sequence[str] = (),
        *,
        max_inflight: int = MAX_INFLIGHT,
        timeout_s: float = LOOKUP_TIMEOUT_S,
        tries: int = LOOKUP_TRIES,
        guard_s: float = LOOKUP_GUARD_S,
        max_names: int = MAX_NAMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = list(servers)
        self.timeout_s = timeout_s
        self.tries = tries
        self.guard_s = guard_s
        self.max_names = max_names
        self.clock = clock
        self._max_inflight = max_inflight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max_inflight)
        self._zones: dict[str, tuple[asyncio.Semaphore, int]] = {}  # zone -> (slots, users)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._flights: dict[str, asyncio.Future[Resolved]] = {}
        self._waiters: dict[asyncio.Future[Resolved], int] = {}  # callers of each flight
        self._started: set[asyncio.Future[Resolved]] = set()  # flights holding their slots
        self.lookups = 0  # lookups sent (for tests and metrics)
        self.slot_wait_s = SLOT_WAIT_S
        self.per_zone = MAX_PER_ZONE

    async def resolve(self, host: str) -> Resolved:
        """The (family, address) pairs of *host*; :class:`NameNotResolved` when it has none."""
        name = host.rstrip(".").lower()
        entry = self._cache.get(name)
        if entry is not None:
            if entry.expires > self.clock():
                if entry.addresses is None:  # (a failure kept 10 s: not a healthy hit)
                    DNS_LOOKUPS.labels("cached_failed").inc()
                    raise NameNotResolved(entry.reason)
                DNS_LOOKUPS.labels("cached").inc()
                return entry.addresses
            del self._cache[name]
        self._bind()
        flight = self._flights.get(name)
        if flight is None:
            flight = asyncio.ensure_future(self._lookup(name))
            self._flights[name] = flight
            flight.add_done_callback(lambda done: self._landed(name, done))
        # shield: one caller giving up (its attempt's deadline) leaves the lookup to the
        # others; when the last one gives up, a lookup still waiting for a slot is dropped
        self._waiters[flight] = self._waiters.get(flight, 0) + 1
        try:
            return await asyncio.shield(flight)
        finally:
            left = self._waiters.pop(flight) - 1
            if left:
                self._waiters[flight] = left
            elif not flight.done() and flight not in self._started:
                flight.cancel()
                # (gone at once: a caller coming before the task ends starts its own lookup
                # rather than getting this one's cancellation)
                if self._flights.get(name) is flight:
                    del self._flights[name]

    def _landed(self, name: str, flight: asyncio.Future[Resolved]) -> None:
        if self._flights.get(name) is flight:
            del self._flights[name]
        if not flight.cancelled():
            flight.exception()  # (retrieved: a failure no caller waits for is not logged)

    def _bind(self) -> None:
        """Lookups belong to one event loop (a process has one; tests make one per test)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._slots = asyncio.Semaphore(self._max_inflight)
            self._flights.clear()
            self._zones.clear()
            self._waiters.clear()
            self._started.clear()

    async def _slot(self, key: str) -> asyncio.Semaphore:
        """Wait (SLOT_WAIT_S at most) for a slot of the zone *key*, then for one of all; the
        zone's semaphore is returned (both are released by :meth:`_release`)."""
        sem, users = self._zones.get(key) or (asyncio.Semaphore(self.per_zone), 0)
        self._zones[key] = (sem, users + 1)  # (kept while anyone waits for it or holds it)
        try:
            async with asyncio.timeout(self.slot_wait_s):
                await sem.acquire()
                try:
                    await self._slots.acquire()
                except BaseException:
                    sem.release()
                    raise
        except BaseException as exc:
            self._leave_zone(key)
            if not isinstance(exc, TimeoutError):
                raise
            DNS_LOOKUPS.labels("busy").inc()
            raise ResolverBusy(
                f"resolver busy: no lookup slot in {self.slot_wait_s:g} s"
                f" ({self._max_inflight} in flight at most, {self.per_zone} per zone)"
            ) from None
        return sem

    def _release(self, key: str, sem: asyncio.Semaphore) -> None:
        self._slots.release()
        sem.release()
        self._leave_zone(key)

    def _leave_zone(self, key: str) -> None:
        sem, users = self._zones[key]
        if users > 1:
            self._zones[key] = (sem, users - 1)
        else:
            del self._zones[key]

    async def _lookup(self, name: str) -> Resolved:
        key = zone(name)
        sem = await self._slot(key)
        flight = asyncio.current_task()
        if flight is not None:  # (from here on, a caller giving up leaves it running)
            self._started.add(flight)
        try:
            return await self._query(name)
        finally:
            self._release(key, sem)
            if flight is not None:
                self._started.discard(flight)

    async def _query(self, name: str) -> Resolved:
        self.lookups += 1
        try:
            lookup = Lookup(self.servers, self.timeout_s, self.tries)
        except Exception as exc:  # (no channel: out of sockets or memory) says nothing of it
            DNS_LOOKUPS.labels("busy").inc()
            raise ResolverBusy(f"resolver unavailable: {type(exc).__name__}") from None
        try:
            async with asyncio.timeout(self.guard_s):
                result = await lookup.getaddrinfo(name)
        except TimeoutError:
            reason = "dns: host not resolved (lookup timed out)"
            self._remember(name, None, NEGATIVE_TTL_S, reason)
            DNS_LOOKUPS.labels("timeout").inc()
            raise NameNotResolved(reason) from None
        except DNSError as exc:
            why = str(exc.args[1] if len(exc.args) > 1 else exc).lower()
            reason = f"dns: host not resolved ({why})"
            self._remember(name, None, NEGATIVE_TTL_S, reason[:120])
            # (c-ares' own timers may end it first, as a timeout too)
            timed_out = bool(exc.args) and exc.args[0] == ARES_ETIMEOUT
            DNS_LOOKUPS.labels("timeout" if timed_out else "failed").inc()
            raise NameNotResolved(reason[:120]) from None
        finally:
            lookup.close()
        addresses: Resolved = []
        ttls: list[int] = []
        for node in result.nodes:
            ip = node.addr[0]
            ip_text = ip.decode() if isinstance(ip, bytes) else str(ip)
            if (int(node.family), ip_text) not in addresses:
                addresses.append((int(node.family), ip_text))
            ttls.append(int(node.ttl))
        if not addresses:
            self._remember(name, None, NEGATIVE_TTL_S, "dns: host not resolved (no address)")
            DNS_LOOKUPS.labels("failed").inc()
            raise NameNotResolved("dns: host not resolved (no address)")
        ttl = min(max(float(min(ttls)), MIN_TTL_S), MAX_TTL_S)
        self._remember(name, addresses, ttl)
        DNS_LOOKUPS.labels("resolved").inc()
        return addresses

    def _remember(
        self, name: str, addresses: Resolved | None, ttl: float, reason: str = ""
    ) -> None:
        self._cache[name] = _Entry(self.clock() + ttl, addresses, reason)
        self._cache.move_to_end(name)
        while len(self._cache) > self.max_names:
            self._cache.popitem(last=False)
