"""Where callbacks may go: the SSRF policy, checked at registration and at connect time.

A callback host must resolve only to public unicast addresses unless RELAY_CALLBACK_ALLOW
opens it. Numeric host forms that C resolvers accept (``2130706433``, ``0x7f.1``, ``127.1``)
are read the way a resolver would read them. At delivery time :meth:`CallbackPolicy.resolve`
gives the webhook client only addresses that pass the check, and the connection goes to the
address that was checked (no second lookup for DNS rebinding to exploit).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from yarl import URL

from relay.constants import MAX_CALLBACK_URL
from relay.domain.origin import CallbackAllow
from relay.http.dns import Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[str, int] | tuple[str, int, int, int]
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, ...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS (IPv6)
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
    ipaddress.ip_address("169.254.170.23"),  # AWS EKS Pod Identity
    ipaddress.ip_address("fd00:ec2::23"),  # ... (IPv6)
    ipaddress.ip_address("fd20:ce::254"),  # GCP (IPv6)
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}


# NAT64 (RFC 6052, 8215) and SIIT's IPv4-translated form ::ffff:0:a.b.c.d (RFC 2765): a
# translator on the path takes them to the IPv4 address inside
_NAT64 = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
)
# reserved, not global, though Python before 3.11.10/3.12.4 calls them global: IETF protocol
# assignments, the 6to4 relay anycast, SRv6 SIDs, IPv6 documentation; and IPv6 site-local
# (deprecated, RFC 3879, but a host may still route it inside its site: never global)
_RESERVED = (
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("192.88.99.0/24"),
    ipaddress.ip_network("5f00::/16"),
    ipaddress.ip_network("3fff::/20"),
    ipaddress.ip_network("fec0::/10"),
)
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for or tunnels to, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64) or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def metadata(ip: IPAddress) -> bool:
    """A cloud metadata address, or an IPv6 form carrying one: never a callback, whatever
    RELAY_CALLBACK_ALLOW opens (a network or a host name that comes to resolve to it)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(ip.packed)  # (a zone id: fe80::1%eth0 is not fe80::1)
        inner = embedded_ipv4(ip)
        return ip in _METADATA or (inner is not None and inner in _METADATA)
    return ip in _METADATA


# what a refusal at registration adds: the first callback anyone tries is on localhost
ALLOW_HINT = (
    "; to allow it, add its network or host name to RELAY_CALLBACK_ALLOW "
    "(e.g. RELAY_CALLBACK_ALLOW=127.0.0.1/32)"
)


class CallbackRefused(ValueError):
    """The callback URL is not allowed; the message says why (safe to show the caller)."""


# a DNS name as a URL carries it (IDNA-encoded): labels of letters, digits, '-' and '_' (some
# hosts have one), 1 to 63 each, dot-separated, an optional final dot
_HOST_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")


def literal_ip(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, in any form a resolver accepts."""
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if h and all(ch in "0123456789abcdefxABCDEFX." for ch in h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


class CallbackPolicy:
    """Decides whether a callback URL or address may be reached."""

    def __init__(self, allow: CallbackAllow, resolver: Resolver | None = None) -> None:
        self._allow = allow
        self.resolver = resolver or Resolver()

    def host_allowed(self, host: str) -> bool:
        """A host name opened by RELAY_CALLBACK_ALLOW (its addresses are then not checked,
        but for cloud metadata ones: :func:`metadata`)."""
        return host.lower().rstrip(".") in self._allow.hosts

    def ip_allowed(self, ip: IPAddress) -> bool:
        """A public unicast address, or one inside an allowed network. An IPv6 address that
        carries an IPv4 address (mapped, compatible, NAT64, SIIT, 6to4, Teredo) is judged by
        both."""
        if metadata(ip):
            return False
        inner = embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
        nets = self._allow.networks
        if any(ip in n for n in nets) or (inner is not None and any(inner in n for n in nets)):
            return True
        if ip.is_multicast or ip.is_unspecified:
            return False
        if any(ip in n for n in _RESERVED if n.version == ip.version):
            return False
        if inner is not None:  # judged by where it really leads
            return self.ip_allowed(inner)
        return ip.is_global

    def parse(self, url: str) -> URL:
        """Check a callback URL's form; :class:`CallbackRefused` names what is wrong."""
        if len(url) > MAX_CALLBACK_URL:
            raise CallbackRefused(f"must be at most {MAX_CALLBACK_URL} characters")
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in url):
            # (a URL parser drops tabs and newlines: the URL used would not be the one shown)
            raise CallbackRefused("must not contain control characters")
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            if _bad_port(url):  # (yarl refuses :99999 as a whole: say which part)
                raise CallbackRefused("has a port that is not a number from 1 to 65535") from None
            raise CallbackRefused("is not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.is_absolute():
            raise CallbackRefused("must be an absolute http or https URL")
        if not parsed.raw_host:
            raise CallbackRefused("has no host")
        ip = literal_ip(parsed.raw_host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            # (an interface of the worker's host: never a receiver's, and fd00::1%1 is not
            # fd00::1 to the address checks)
            raise CallbackRefused("has an IPv6 zone id (%...): a callback never needs one")
        if ip is None and not _HOST_NAME.fullmatch(parsed.raw_host):
            # (a space, a %-escape, an empty label: no DNS name, so no use asking DNS)
            raise CallbackRefused("has a host that is not a host name")
        try:
            port = parsed.port
        except ValueError:
            raise CallbackRefused("has a port that is not a number from 1 to 65535") from None
        if not port:  # (port 0: nothing listens there, every attempt would fail)
            raise CallbackRefused("has a port that is not a number from 1 to 65535")
        return parsed

    async def check(self, url: str) -> URL:
        """Full check at registration: form, then every address the host resolves to."""
        parsed = self.parse(url)
        host = parsed.raw_host or ""
        ip = literal_ip(host)
        if self.host_allowed(host) and (ip is None or not metadata(ip)):
            return parsed
        if ip is not None:
            if metadata(ip):  # (no hint: opening it would not help)
                raise CallbackRefused("points to a cloud metadata address")
            if not self.ip_allowed(ip):
                raise CallbackRefused(
                    "points to a private, loopback or reserved address" + ALLOW_HINT
                )
            return parsed
        # One refusal whether the name does not resolve or resolves to an address that is
        # not allowed, and which address is not said: a caller must not learn which
        # internal names exist, nor where they point.
        refused = CallbackRefused(
            "host name does not resolve to a public address: it does not resolve (a typo,"
            " or its DNS is failing: try again later), or it resolves to a private one; to"
            " allow an internal host, add its name to RELAY_CALLBACK_ALLOW"
            f" (e.g. RELAY_CALLBACK_ALLOW={host}), or every network it resolves to"
            + (" (localhost is 127.0.0.1 and ::1)" if host.lower() == "localhost" else "")
        )
        try:
            found = await self.resolver.resolve(host)
        except (OSError, UnicodeError):
            raise refused from None
        addresses = {ipaddress.ip_address(ip.split("%", 1)[0]) for _, ip in found}
        if not addresses or not all(self.ip_allowed(a) for a in addresses):
            raise refused
        return parsed

    async def resolve(self, host: str, port: int) -> list[tuple[int, SockAddr]]:
        """Where a connection to *host*:*port* may go: (family, socket address) pairs, only
        allowed ones. :class:`CallbackRefused` when none is left,
        :class:`~relay.http.dns.NameNotResolved` (an OSError) when the name does not resolve."""
        ip = literal_ip(host)
        if ip is not None:
            if metadata(ip) or not (self.host_allowed(host) or self.ip_allowed(ip)):
                raise CallbackRefused("points to a private, loopback or reserved address")
            family = int(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
            return [(family, (str(ip), port))]
        found = await self.resolver.resolve(host)
        opened = self.host_allowed(host)
        out: list[tuple[int, SockAddr]] = []
        for family, addr in found:
            at = ipaddress.ip_address(addr.split("%", 1)[0])
            if (opened and not metadata(at)) or self.ip_allowed(at):
                v6 = family == socket.AF_INET6
                sockaddr: SockAddr = (addr, port, 0, 0) if v6 else (addr, port)
                out.append((family, sockaddr))
        if not out:
            raise CallbackRefused("resolves only to private, loopback or reserved addresses")
        return out


def _bad_port(url: str) -> bool:
    """Does *url* parse but for its port (out of range, or not a number)?"""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    try:
        _ = parts.port  # (raises for a port out of range or not a number)
    except ValueError:
        return True
    return False
