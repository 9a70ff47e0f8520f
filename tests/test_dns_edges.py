"""Edges of the resolver (relay/http/dns.py) a mutation review found untested: a lookup that
outlives c-ares' own timer, a lookup whose callers gave up after it was sent or before it
got a slot, the cache's bound and the TTL of a name with two. The test's own DNS server on
loopback, as in tests/test_dns.py (whose fixture and clock these reuse)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from dnslib import QTYPE, DNSRecord  # type: ignore[import-untyped]

from relay.http.dns import NameNotResolved, Resolver, ResolverBusy
from tests.dns_server import DnsServer, Name
from tests.test_dns import Clock, dns

__all__ = ["dns"]  # (the fixture of test_dns, used here)


async def test_a_lookup_that_outlives_its_guard_is_remembered_as_failed(dns: DnsServer) -> None:
    """A lookup c-ares does not end by itself (its own timer here is 5 s) is ended by the
    resolver's guard (``guard_s``), and the name is then remembered as failed for 10 s like
    any other failure: not asked again on every attempt. (a mutation review, 2026-12-06)"""
    clock = Clock()
    resolver = Resolver([dns.address], timeout_s=5.0, tries=1, guard_s=1.0, clock=clock)
    await resolver.resolve("fast.test")
    with pytest.raises(NameNotResolved, match=r"lookup timed out"):
        await resolver.resolve("never.test")
    assert resolver.lookups == 2
    with pytest.raises(NameNotResolved, match=r"lookup timed out"):
        await asyncio.wait_for(resolver.resolve("never.test"), 0.5)
    assert resolver.lookups == 2
    clock.now += 11
    dns.names["never.test"] = Name()
    assert await resolver.resolve("never.test") == [(2, "127.0.0.1")]
    assert resolver.lookups == 3


async def test_a_lookup_sent_is_kept_when_its_caller_gives_up(dns: DnsServer) -> None:
    """A caller that gives up on a lookup already sent (its attempt's deadline) leaves it
    running: its answer is cached, and the name is not asked again on the next attempt.
    (a mutation review, 2026-12-06)"""
    dns.names["slowish.test"] = Name(delay=0.4)
    resolver = Resolver([dns.address])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(resolver.resolve("slowish.test"), 0.2)
    assert resolver.lookups == 1
    await asyncio.sleep(0.5)  # the answer comes meanwhile
    assert await resolver.resolve("slowish.test") == [(2, "127.0.0.1")]
    assert resolver.lookups == 1 and dns.lookups("slowish.test") == 1


async def test_a_lookup_given_up_before_its_slot_is_never_sent(dns: DnsServer) -> None:
    """A lookup whose only caller gave up while it waited for its zone's slot is dropped:
    when the slot comes free, it is not sent. (a mutation review, 2026-12-06)"""
    dns.names["h0.calm.test"] = Name(delay=0.3)
    dns.names["h1.calm.test"] = Name()
    resolver = Resolver([dns.address])
    resolver.per_zone = 1
    holder = asyncio.create_task(resolver.resolve("h0.calm.test"))
    while not dns.lookups("h0.calm.test"):  # (it holds the zone's one slot)
        await asyncio.sleep(0.005)
    abandoned = asyncio.create_task(resolver.resolve("h1.calm.test"))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    assert await holder == [(2, "127.0.0.1")]
    await asyncio.sleep(0.3)
    assert dns.lookups("h1.calm.test") == 0
    assert resolver.lookups == 1


async def test_the_oldest_name_leaves_a_full_cache(dns: DnsServer) -> None:
    """``max_names`` bounds the cache by sending the oldest entry out, never the one just
    added. (a mutation review, 2026-12-06)"""
    dns.names["third.test"] = Name()
    resolver = Resolver([dns.address], max_names=2)
    for name in ("fast.test", "other.test", "third.test", "third.test", "other.test"):
        await resolver.resolve(name)
    assert resolver.lookups == 3
    await resolver.resolve("fast.test")  # the oldest: gone
    assert resolver.lookups == 4


@dataclass
class TwoTtls(DnsServer):
    """The test's DNS server, but its AAAA records carry ``aaaa_ttl`` rather than the name's."""

    aaaa_ttl: int = 60

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        reply = DNSRecord.parse(packet)
        for rr in reply.rr:
            if rr.rtype == QTYPE.AAAA:
                rr.ttl = self.aaaa_ttl
        super()._send(reply.pack(), addr)


async def test_a_name_is_kept_for_its_shortest_ttl() -> None:
    """A name whose A and AAAA records have different TTLs is kept for the shorter one.
    (a mutation review, 2026-12-06)"""
    server = await TwoTtls(
        {"two.test": Name(ips=("127.0.0.1", "::1"), ttl=40)}, aaaa_ttl=200
    ).start()
    clock = Clock()
    resolver = Resolver([server.address], clock=clock)
    try:
        assert sorted(await resolver.resolve("two.test")) == [(2, "127.0.0.1"), (10, "::1")]
        clock.now += 39
        await resolver.resolve("two.test")
        assert resolver.lookups == 1
        clock.now += 2
        await resolver.resolve("two.test")
        assert resolver.lookups == 2
    finally:
        server.close()


async def test_a_channel_that_cannot_be_made_is_resolver_busy(
    dns: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When c-ares cannot make a lookup's channel (out of sockets, memory), the attempt
    fails as "resolver busy" -- nothing said of its origin, nothing cached -- not with
    c-ares' own error, which no caller expects; the next lookup is made as usual."""
    from relay.http import dns as dns_module

    made = dns_module.Lookup

    def broken(*args: object) -> dns_module.Lookup:
        raise OSError("too many open files")

    resolver = Resolver([dns.address])
    monkeypatch.setattr(dns_module, "Lookup", broken)
    with pytest.raises(ResolverBusy, match="resolver unavailable: OSError"):
        await resolver.resolve("fast.test")
    monkeypatch.setattr(dns_module, "Lookup", made)
    assert await resolver.resolve("fast.test") == [(2, "127.0.0.1")]


async def test_every_lookup_closes_its_channel(
    dns: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each lookup's c-ares channel is closed when it ends -- answered, failed, or given up
    at its guard -- not left to the garbage collector (the channel and its socket callback
    refer to each other: ~8 KB of C memory each waited for the slowest pass; a review,
    2026-12-07)."""
    import pycares

    closed = 0
    close = pycares.Channel.close

    def counted(self: pycares.Channel) -> None:
        nonlocal closed
        closed += 1
        close(self)

    monkeypatch.setattr(pycares.Channel, "close", counted)
    dns.names["never.test"] = Name(silent=True)
    resolver = Resolver([dns.address], timeout_s=5.0, tries=1, guard_s=0.3)
    assert await resolver.resolve("fast.test") == [(2, "127.0.0.1")]
    with pytest.raises(NameNotResolved):
        await resolver.resolve("nxdomain.test")
    with pytest.raises(NameNotResolved, match="timed out"):
        await resolver.resolve("never.test")
    assert resolver.lookups == 3 and closed == 3
