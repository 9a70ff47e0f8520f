"""Who is on the other side of a request: the client's address, also behind a proxy.

Behind an Ingress every request comes from the proxy, so a limit counted per peer address
(the dashboard's sign-ins) would be one bucket for everyone: one visitor guessing keys would
lock every operator out. With RELAY_TRUSTED_PROXIES, a request whose peer is one of them is
counted by the address its ``X-Forwarded-For`` names: the rightmost entry that is not itself
a trusted proxy (the entries left of it were written by the client, and a client can write
anything there). A peer that is not trusted is the client, whatever its headers say.

(Not ``aiohttp-remotes``: its strict mode refuses every request whose peer is not a trusted
proxy, which a probe from the kubelet is, and its relaxed mode believes any peer's headers.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from relay.settings import IPNetwork


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [ipv6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # ipv4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # a dual-stack listener shows an IPv4 peer as ::ffff:a.b.c.d
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, proxies: Sequence[IPNetwork]
) -> bool:
    return address is not None and any(address in network for network in proxies)


def client_address(request: web.Request, proxies: Sequence[IPNetwork]) -> str:
    """The client's address: the peer's, or, when the peer is a trusted proxy, the rightmost
    ``X-Forwarded-For`` entry that is not one (its leftmost when all are); "unknown" when
    there is no peer address or a trusted proxy forwarded one that is not an address."""
    peer = request.remote or ""
    if not proxies or not _trusted(_address(peer), proxies):
        return peer or "unknown"
    hops = [h for line in request.headers.getall("X-Forwarded-For", []) for h in line.split(",")]
    hops = [h.strip() for h in hops if h.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return "unknown"  # a trusted proxy's chain with garbage in it: one shared bucket
        if not _trusted(address, proxies):
            return str(address)
    first = _address(hops[0]) if hops else None
    return str(first) if first is not None else peer


def limit_bucket(address: str) -> str:
    """What a per-client limit counts *address* under: an IPv6 address by its /64 (one
    host is usually given a whole /64, so counting /128s would let it try 2**64 times as
    often), an IPv4 address (and "unknown") as it is."""
    found = _address(address)
    if isinstance(found, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((found, 64), strict=False))
    return address
