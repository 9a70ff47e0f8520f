"""How the environment's text becomes configuration values: the parsers of
:class:`relay.settings.Settings`' fields, and the field types that name them.

Each parser raises ``ValueError`` with a short reason naming what is wrong, never repeating a
secret's value; :func:`relay.settings.load` prefixes the variable's name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BeforeValidator
from pydantic_settings import NoDecode

from relay.domain.origin import CallbackAllow, IPNetwork

MAX_SECONDS = 3650 * 86400.0  # a duration past ten years is a typo (1e300: none would expire)
# a tenant's name as the docs advise (it names Redis keys, log fields, pages): one outside it
# is warned about at start, not refused -- a deployment's watches are stored under their name
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of RELAY_API_KEYS: the tenant name and the key itself."""

    tenant: str
    key: str = field(repr=False)


# --- parsers of the environment's text: each raises ValueError with a short reason -----------
# A reason never repeats a secret's value: pydantic's own error text would (``input_value``),
# so load() builds ConfigError from these reasons alone.


def _float(raw: str, *, positive: bool = True) -> float:
    try:
        if "_" in raw:  # (Python's float() reads 1_000; an operator's tools may not)
            raise ValueError
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    if positive and value <= 0:
        raise ValueError("must be greater than 0")
    if value < 0:
        raise ValueError("must be at least 0.0")
    return value


def _duration(raw: str, *, positive: bool) -> float:
    value = _float(raw, positive=positive)
    if value > MAX_SECONDS:
        raise ValueError("more than ten years: give seconds")
    return value


def _seconds(raw: str) -> float:
    return _duration(raw, positive=True)


def _pause(raw: str) -> float:
    return _duration(raw, positive=False)


def _fraction(raw: str) -> float:
    value = _float(raw)
    if value > 1:
        raise ValueError("must be a fraction, at most 1")
    return value


def _dns_servers(raw: str) -> tuple[str, ...]:
    """``ip[:port]`` (IPv6 as ``[ip]:port``), comma-separated; a server listed twice (``a``
    and ``a:53`` too) is refused: c-ares would ask it twice as often, a typo's likely sign."""
    out, seen = [], set()
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        host, port = part, ""
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
            if rest and not rest.startswith(":"):
                raise ValueError(f"expected [ipv6]:port, got {part!r}")
        elif part.count(":") == 1:
            host, port = part.split(":")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"expected an IP address, got {host!r}") from None
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"expected a port number, got {port!r}")
        if (ip, int(port or 53)) in seen:
            raise ValueError(f"{part!r} is listed twice")
        seen.add((ip, int(port or 53)))
        shown = f"[{ip}]" if ip.version == 6 and port else str(ip)
        out.append(f"{shown}:{port}" if port else shown)
    return tuple(out)


def _whole(raw: str, what: str) -> int:
    try:
        if "_" in raw:  # (int() reads 8_080 too; an operator's tools may not)
            raise ValueError
        return int(raw)
    except ValueError:
        raise ValueError(f"expected {what}, got {raw!r}") from None


def _port(raw: str) -> int:
    value = _whole(raw, "a port number")
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _count(raw: str) -> int:
    value = _whole(raw, "a whole number")
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _schedule(raw: str) -> tuple[float, ...]:
    parts = [p.strip() for p in raw.split(",")]
    if parts[-1] == "" and len(parts) > 1:  # (a trailing comma, as lists are often written)
        parts.pop()
    if not any(parts):
        raise ValueError("expected comma-separated delays in seconds")
    if not all(parts):  # (1,,2: a delay left out is a typo, not 1,2)
        raise ValueError("expected comma-separated delays in seconds, none left empty")
    return tuple(_pause(p) for p in parts)


def _token(raw: str) -> str:
    # a key travels in an HTTP header: printable ASCII, no spaces (never echo the value)
    if not raw.isascii() or not raw.isprintable() or any(ch.isspace() for ch in raw):
        raise ValueError("must be printable ASCII without spaces")
    return raw


def _api_keys(raw: str) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    for n, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        tenant, sep, key = part.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            # never echo the value: it holds secrets
            raise ValueError(f"entry {n + 1} is not of the form name:key")
        head, colon, _ = key.partition(":")  # (entries run together: "a:k1;b:k2")
        if colon and ";" in head:
            raise ValueError(f"entry {n + 1}: looks like two, 'name:key;name:key': use ','")
        try:
            _token(key.strip())
        except ValueError as exc:
            raise ValueError(f"entry {n + 1}: the key {exc}") from None
        keys.append(ApiKey(tenant.strip(), key.strip()))
    if len({k.key for k in keys}) != len(keys):
        raise ValueError("the same key is given twice")
    return tuple(keys)


def _allow(raw: str) -> CallbackAllow:
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            if "/" in part or not all(c.isalnum() or c in "-._" for c in part):
                raise ValueError(f"{part!r} is neither a CIDR nor a host name") from None
            hosts.add(part.lower().rstrip("."))
            continue
        try:
            ipaddress.ip_network(part, strict=True)
        except ValueError:
            # (10.0.0.1/8 read as 10.0.0.0/8 opened the whole network for a typo, as
            # RELAY_TRUSTED_PROXIES already refuses)
            raise ValueError(f"{part!r} has host bits set: give the network, {network}") from None
        networks.append(network)
    return CallbackAllow(tuple(networks), frozenset(hosts))


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    if any(c.isspace() for c in raw):
        raise ValueError("a URL holds no space")
    try:
        host = urlsplit(raw).hostname
    except ValueError:
        host = None
    if not host:
        raise ValueError("expected an http:// or https:// URL with a host")
    return raw.rstrip("/")


def url_passwords(url: str) -> list[str]:
    """The password of a Redis URL, as written and decoded: in its user part or, as
    redis-py also reads it, a ``password`` query parameter (none: [])."""
    parts = urlsplit(url)
    pairs = (q.partition("=") for q in parts.query.split("&"))
    found = [parts.password or "", *(value for name, _, value in pairs if name == "password")]
    return [v for p in found if p for v in dict.fromkeys((p, unquote(p)))]


URL_STRING_OPTIONS = frozenset({"username", "password", "client_name"})
URL_SSL_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_ciphers"}
)


def _redis_url_options(scheme: str, query: str) -> None:
    """Refuse a query option the relay's Redis connections would fail on when they connect
    (redis-py passes any name on to the connection, which raises TypeError then): one it
    does not know, or a known one whose value does not parse. Only known names are shown
    (a query may carry a password; a name mistyped might be anything)."""
    from redis.asyncio import connection as rc

    # the options a URL can set: those redis-py parses, and strings it passes on as they are
    # (not any keyword of the connection class: ?retry=x or ?encoding=nope would pass and
    # then fail at the first command)
    known = set(rc.URL_QUERY_ARGUMENT_PARSERS) | URL_STRING_OPTIONS
    if scheme == "rediss":
        known |= URL_SSL_OPTIONS
    for name, value in parse_qsl(query):
        if name not in known:
            raise ValueError(
                "a query option of the URL is not one of redis-py's connection options "
                "(e.g. socket_timeout, socket_connect_timeout, health_check_interval, "
                "client_name, password, ssl_cert_reqs)"
            )
        parser = rc.URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None:
            try:
                parser(unquote(value))
            except (TypeError, ValueError):
                raise ValueError(f"the query option {name} has a value that is not valid") from None


def _redis_url(raw: str) -> str:
    from relay.store.connection import SENTINEL_SCHEME, parse_sentinel

    if raw.startswith(SENTINEL_SCHEME):
        parse_sentinel(raw)
        return raw
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    # (no message holds the URL or a part of it: it may carry a password)
    from redis.asyncio.connection import parse_url

    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ValueError(
            "expected redis://[user:password@]host[:port][/db] with a port from 1 to 65535"
        ) from None
    _redis_url_options(parts.scheme, parts.query)
    parse_url(raw)  # as the relay's own connections will read it (checked just above)
    if raw.startswith("unix://"):
        return raw
    if port == 0 or not parts.hostname:
        raise ValueError("expected redis://[user:password@]host[:port][/db]")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError("the database (after the host's /) must be a number, e.g. /0")
    return raw


def _log_format(raw: str) -> str:
    if raw not in ("json", "console"):
        raise ValueError("expected 'json' or 'console'")
    return raw


def _secrets_key(raw: str) -> str:
    from relay.domain.crypto import (
        check_key,  # local: keeps cryptography off the import path of tools
    )

    check_key(raw)
    return ",".join(k.strip() for k in raw.split(","))  # (newest first)


def _switch(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("expected 1 (on) or 0 (off)")
    return raw == "1"


def _text(parse: Callable[[str], object]) -> BeforeValidator:
    """Parse the environment's text with *parse*; values given in code go to the type check."""

    def validate(value: object) -> object:
        return parse(value) if isinstance(value, str) else value

    return BeforeValidator(validate)


def _networks(raw: str) -> tuple[IPNetwork, ...]:
    """Addresses or networks (``10.0.0.0/8``, ``fd00::/8``, ``127.0.0.1``), comma-separated.
    A network with host bits set (``10.0.0.1/8``: a typo that would widen the trust) and
    one of every address (``/0``: anyone's headers believed) are refused."""
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            network = ipaddress.ip_network(part, strict=True)
        except ValueError:
            raise ValueError(
                f"expected an IP address or network (without host bits), got {part!r}"
            ) from None
        if network.prefixlen == 0:
            raise ValueError(f"{part!r} trusts every address: list the proxies themselves")
        out.append(network)
    return tuple(out)


# The field types: what a variable holds and how its text is read.
Seconds = Annotated[float, _text(_seconds)]  # > 0, ten years at most
Pause = Annotated[float, _text(_pause)]  # >= 0, ten years at most
Fraction = Annotated[float, _text(_fraction)]  # 0 < x <= 1
Port = Annotated[int, _text(_port)]  # 0..65535
Count = Annotated[int, _text(_count)]  # >= 1
Switch = Annotated[bool, _text(_switch)]  # 1 or 0
# comma-separated lists: NoDecode, so pydantic-settings hands over the plain string (not JSON)
Schedule = Annotated[tuple[float, ...], NoDecode, _text(_schedule)]
ApiKeys = Annotated[tuple[ApiKey, ...], NoDecode, _text(_api_keys)]
Allow = Annotated[CallbackAllow, NoDecode, _text(_allow)]
DnsServers = Annotated[tuple[str, ...], NoDecode, _text(_dns_servers)]
Networks = Annotated[tuple[IPNetwork, ...], NoDecode, _text(_networks)]


RedisUrl = Annotated[str, _text(_redis_url)]
HttpUrl = Annotated[str, _text(_url)]
Token = Annotated[str, _text(_token)]
SecretsKey = Annotated[str, _text(_secrets_key)]
LogFormat = Annotated[Literal["json", "console"], _text(_log_format)]
