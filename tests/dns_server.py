"""A DNS server on loopback for the tests: answers A queries from a table, slowly, wrongly or
not at all, as told; counts what it was asked. UDP, in the test's own event loop (dnslib
reads and writes the packets)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


@dataclass
class Name:
    """How the server answers for one name."""

    ips: tuple[str, ...] = ("127.0.0.1",)
    ttl: int = 60
    delay: float = 0.0
    rcode: int = RCODE.NOERROR  # NXDOMAIN, SERVFAIL, ...
    silent: bool = False  # never answer


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """``start()`` binds 127.0.0.1 on a free port; ``names`` says how each name answers
    (unknown names: NXDOMAIN); ``asked`` counts queries per (name, type)."""

    names: dict[str, Name] = field(default_factory=dict)
    asked: Counter[tuple[str, str]] = field(default_factory=Counter)
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        """``ip:port`` as RELAY_DNS_SERVERS takes it."""
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        request = DNSRecord.parse(data)
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.asked[(qname, qtype)] += 1
        spec = self.names.get(qname)
        reply = request.reply()
        if spec is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif spec.silent:
            return
        else:
            reply.header.rcode = spec.rcode
            for ip in spec.ips if spec.rcode == RCODE.NOERROR else ():
                v6 = ":" in ip
                if (qtype == "AAAA") == v6:
                    rtype, rdata = (QTYPE.AAAA, AAAA(ip)) if v6 else (QTYPE.A, A(ip))
                    reply.add_answer(RR(request.q.qname, rtype, rdata=rdata, ttl=spec.ttl))
        packet = reply.pack()
        delay = spec.delay if spec else 0.0
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, packet, addr)
        else:
            self._send(packet, addr)

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(packet, addr)

    def lookups(self, name: str) -> int:
        """A queries asked for *name*."""
        return self.asked[(name, "A")]
