"""A callback's origin -- (scheme, host, port), what the per-origin lanes, cap and breaker
are keyed by -- and its short tag, what a video's waiting watches record of it so that a
fan-out can order and pace its events by origin without reading the watches; and the
private networks and hosts callbacks may reach all the same (``RELAY_CALLBACK_ALLOW``)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from yarl import URL

Origin = tuple[str, str, int]  # scheme, host (as in the URL), port
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CallbackAllow:
    """RELAY_CALLBACK_ALLOW: networks and host names callbacks may reach although private
    (read from the environment by :mod:`relay.envtext`, applied by :mod:`relay.http.ssrf`)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()


def origin_of(url: URL) -> Origin:
    """The origin of an absolute URL (the default port of its scheme when it names none)."""
    scheme = url.scheme
    return scheme, url.raw_host or "", url.port or (443 if scheme == "https" else 80)


@lru_cache(maxsize=20_000)
def origin_tag(origin: Origin) -> str:
    """Six characters naming *origin* (32 bits of a hash: a collision of two origins costs
    only the fairness of a fan-out's order between them, never a delivery)."""
    digest = hashlib.blake2b(repr(origin).encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest)[:6].decode()


@lru_cache(maxsize=20_000)
def callback_origin(callback_url: str) -> Origin:
    """The origin of a callback URL (one that does not parse is an origin of its own: its
    attempt fails at once)."""
    try:
        return origin_of(URL(callback_url))
    except (ValueError, TypeError):
        return ("", callback_url, 0)


def url_origin_tag(callback_url: str) -> str:
    """:func:`origin_tag` of a callback URL's origin."""
    return origin_tag(callback_origin(callback_url))
