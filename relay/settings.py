"""Typed configuration, read from the environment once at start.

Every variable of SPEC.md's configuration table is a field here. A missing or malformed value
raises :class:`ConfigError` with a one-line message naming the variable; the CLI prints that
line and exits with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

T = TypeVar("T")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of RELAY_API_KEYS: the tenant name and the key itself."""

    tenant: str
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CallbackAllow:
    """RELAY_CALLBACK_ALLOW: networks and host names callbacks may reach although private."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Settings:
    """All of the relay's configuration. Durations are seconds (floats)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    scalereach_base_url: str = "https://api.scalereach.ai"
    scalereach_api_key: str = field(default="", repr=False)
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    host: str = "0.0.0.0"
    port: int = 8080
    callback_allow: CallbackAllow = CallbackAllow()
    poll_interval: float = 10.0
    watch_timeout: float = 21600.0
    retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    delivery_timeout: float = 15.0
    render_timeout: float = 1800.0
    upstream_rps: float = 20.0
    shutdown_grace: float = 20.0
    rate_limit: float = 50.0
    secret_grace: float = 86400.0
    secrets_key: str = field(default="", repr=False)
    log_format: Literal["json", "console"] = "json"
    # Beyond SPEC's table: knobs operators and tests need.
    metrics_port: int = 9100  # worker's /metrics and /healthz
    upstream_timeout: float = 10.0  # one request to ScaleReach
    link_refresh: float = 2700.0  # clips older than this are fetched again before an attempt
    delivery_concurrency: int = 128  # attempts in flight per worker
    poll_concurrency: int = 64  # upstream requests in flight per worker
    lease: float = 25.0  # a claimed poll/delivery is taken up again after this (crashes)

    def require_api(self) -> None:
        """Check what `clip-relay api` cannot run without."""
        if not self.api_keys:
            raise ConfigError("RELAY_API_KEYS: at least one name:key pair is required")

    def require_worker(self) -> None:
        """Check what `clip-relay worker` cannot run without."""
        if not self.scalereach_api_key:
            raise ConfigError("SCALEREACH_API_KEY: required by the worker")


# --- parsers: each raises ValueError with a short reason -------------------------------------


def _float(raw: str, *, minimum: float = 0.0, positive: bool = True) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    if positive and value <= 0:
        raise ValueError("must be greater than 0")
    if value < minimum:
        raise ValueError(f"must be at least {minimum}")
    return value


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a port number, got {raw!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _schedule(raw: str) -> tuple[float, ...]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if not parts:
        raise ValueError("expected comma-separated delays in seconds")
    return tuple(_float(p, positive=False) for p in parts)


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
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            if "/" in part or not all(c.isalnum() or c in "-._" for c in part):
                raise ValueError(f"{part!r} is neither a CIDR nor a host name") from None
            hosts.add(part.lower().rstrip("."))
    return CallbackAllow(tuple(networks), frozenset(hosts))


def _url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _redis_url(raw: str) -> str:
    from relay.store.connection import SENTINEL_SCHEME, parse_sentinel

    if raw.startswith(SENTINEL_SCHEME):
        parse_sentinel(raw)
        return raw
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss://, unix:// or redis+sentinel:// URL")
    return raw


def _log_format(raw: str) -> Literal["json", "console"]:
    if raw == "json":
        return "json"
    if raw == "console":
        return "console"
    raise ValueError("expected 'json' or 'console'")


def _secrets_key(raw: str) -> str:
    from relay.domain.crypto import (
        check_key,  # local: keeps cryptography off the import path of tools
    )

    check_key(raw)
    return raw


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from *env* (default: the process environment)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}

    def read(name: str, attr: str, parse: Callable[[str], object]) -> None:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return
        try:
            values[attr] = parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    read("REDIS_URL", "redis_url", _redis_url)
    read("SCALEREACH_BASE_URL", "scalereach_base_url", _url)
    read("SCALEREACH_API_KEY", "scalereach_api_key", _token)
    read("RELAY_API_KEYS", "api_keys", _api_keys)
    read("RELAY_HOST", "host", str)
    read("RELAY_PORT", "port", _port)
    read("RELAY_CALLBACK_ALLOW", "callback_allow", _allow)
    read("RELAY_POLL_INTERVAL", "poll_interval", _float)
    read("RELAY_WATCH_TIMEOUT", "watch_timeout", _float)
    read("RELAY_RETRY_SCHEDULE", "retry_schedule", _schedule)
    read("RELAY_DELIVERY_TIMEOUT", "delivery_timeout", _float)
    read("RELAY_RENDER_TIMEOUT", "render_timeout", lambda r: _float(r, positive=False))
    read("RELAY_UPSTREAM_RPS", "upstream_rps", _float)
    read("RELAY_SHUTDOWN_GRACE", "shutdown_grace", lambda r: _float(r, positive=False))
    read("RELAY_RATE_LIMIT", "rate_limit", _float)
    read("RELAY_SECRET_GRACE", "secret_grace", lambda r: _float(r, positive=False))
    read("RELAY_SECRETS_KEY", "secrets_key", _secrets_key)
    read("RELAY_METRICS_PORT", "metrics_port", _port)
    read("RELAY_UPSTREAM_TIMEOUT", "upstream_timeout", _float)
    read("RELAY_LINK_REFRESH", "link_refresh", _float)
    read("RELAY_DELIVERY_CONCURRENCY", "delivery_concurrency", _count)
    read("RELAY_POLL_CONCURRENCY", "poll_concurrency", _count)
    read("RELAY_LEASE", "lease", _float)
    if "log_format" not in values:
        values["log_format"] = "console" if sys.stderr.isatty() else "json"
    read("LOG_FORMAT", "log_format", _log_format)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.lease <= settings.delivery_timeout or settings.lease <= settings.upstream_timeout:
        raise ConfigError(
            "RELAY_LEASE: must be longer than RELAY_DELIVERY_TIMEOUT and RELAY_UPSTREAM_TIMEOUT"
        )
    return settings
