"""Typed configuration, read from the environment once at start.

Every variable of SPEC.md's configuration table is a field of :class:`Settings`, a
``pydantic-settings`` model: the field's ``validation_alias`` is the variable's name, its
annotation says how the variable's text is parsed. :func:`load` is the one door to the
environment: a missing or malformed value raises :class:`ConfigError` with a one-line message
naming the variable (the CLI prints that line and exits with status 2), never the value.

``Settings(...)`` built in code reads no environment (tests construct it from defaults plus
what they pass); text given that way is parsed as the environment's is, other values are checked
for their type only. Its ValidationError repeats no value either.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_API_KEY = 16  # characters: a shorter API key is warned about at start (guessable)


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


# --- parsers of the environment's text: each raises ValueError with a short reason -----------
# A reason never repeats a secret's value: pydantic's own error text would (``input_value``),
# so load() builds ConfigError from these reasons alone.


def _float(raw: str, *, positive: bool = True) -> float:
    try:
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


def _pause(raw: str) -> float:
    return _float(raw, positive=False)


def _fraction(raw: str) -> float:
    value = _float(raw)
    if value > 1:
        raise ValueError("must be a fraction, at most 1")
    return value


def _dns_servers(raw: str) -> tuple[str, ...]:
    """``ip[:port]`` (IPv6 as ``[ip]:port``), comma-separated."""
    out = []
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
        shown = f"[{ip}]" if ip.version == 6 and port else str(ip)
        out.append(f"{shown}:{port}" if port else shown)
    return tuple(out)


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
Seconds = Annotated[float, _text(_float)]  # > 0
Pause = Annotated[float, _text(_pause)]  # >= 0
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


def _default_log_format() -> Literal["json", "console"]:
    return "console" if sys.stderr.isatty() else "json"


class Settings(BaseSettings):
    """All of the relay's configuration. Durations are seconds (floats).

    Fields are in the order load() reports the first malformed variable in.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,  # REDIS_URL, not redis_url
        # the environment by variable name (the alias), code and tests by field: Settings(port=0)
        populate_by_name=True,
        extra="forbid",
        validate_default=False,  # the defaults are right as written ("" = no key)
        hide_input_in_errors=True,  # a ValidationError never repeats a value (secrets)
    )

    redis_url: Annotated[str, _text(_redis_url)] = Field(
        "redis://127.0.0.1:6379/0", validation_alias="REDIS_URL"
    )
    scalereach_base_url: Annotated[str, _text(_url)] = Field(
        "https://api.scalereach.ai", validation_alias="SCALEREACH_BASE_URL"
    )
    scalereach_api_key: Annotated[str, _text(_token)] = Field(
        "", validation_alias="SCALEREACH_API_KEY", repr=False
    )
    api_keys: ApiKeys = Field((), validation_alias="RELAY_API_KEYS", repr=False)
    host: str = Field("0.0.0.0", validation_alias="RELAY_HOST")
    port: Port = Field(8080, validation_alias="RELAY_PORT")
    callback_allow: Allow = Field(CallbackAllow(), validation_alias="RELAY_CALLBACK_ALLOW")
    poll_interval: Seconds = Field(10.0, validation_alias="RELAY_POLL_INTERVAL")
    watch_timeout: Seconds = Field(21600.0, validation_alias="RELAY_WATCH_TIMEOUT")
    retry_schedule: Schedule = Field(
        (5, 300, 1800, 7200, 18000, 36000, 36000), validation_alias="RELAY_RETRY_SCHEDULE"
    )
    delivery_timeout: Seconds = Field(15.0, validation_alias="RELAY_DELIVERY_TIMEOUT")
    render_timeout: Pause = Field(1800.0, validation_alias="RELAY_RENDER_TIMEOUT")
    # (whole, as RELAY_RATE_LIMIT: the budget is counted in Redis' seconds; 0.5 ran at 1 a
    # second and 1.5 at 1, silently -- a review, 2026-12-06)
    upstream_rps: Count = Field(20, validation_alias="RELAY_UPSTREAM_RPS")
    shutdown_grace: Pause = Field(20.0, validation_alias="RELAY_SHUTDOWN_GRACE")
    # (whole requests per second: the limit is counted in one-second windows, so 0.5 would
    # admit none, and 1.5 one -- a review, 2026-12-06)
    rate_limit: Count = Field(50, validation_alias="RELAY_RATE_LIMIT")
    secret_grace: Pause = Field(86400.0, validation_alias="RELAY_SECRET_GRACE")
    secrets_key: Annotated[str, _text(_secrets_key)] = Field(
        "", validation_alias="RELAY_SECRETS_KEY", repr=False
    )
    # the dashboard (/ui/): on or off, its session length, the key of its session cookies
    # (empty: each process makes its own, which serves one replica only)
    ui: Switch = Field(True, validation_alias="RELAY_UI")
    ui_session: Seconds = Field(43200.0, validation_alias="RELAY_UI_SESSION")
    ui_secret: Annotated[str, _text(_token)] = Field(
        "", validation_alias="RELAY_UI_SECRET", repr=False
    )
    # proxies (an Ingress) whose X-Forwarded-For names the client: the dashboard's sign-in
    # limit counts per client, not per proxy
    trusted_proxies: Networks = Field((), validation_alias="RELAY_TRUSTED_PROXIES")
    retention: Seconds = Field(604800.0, validation_alias="RELAY_RETENTION")
    redis_high_water: Fraction = Field(0.9, validation_alias="RELAY_REDIS_HIGH_WATER")
    tenant_max_watches: Count = Field(100000, validation_alias="RELAY_TENANT_MAX_WATCHES")
    dns_servers: DnsServers = Field((), validation_alias="RELAY_DNS_SERVERS")
    origin_concurrency: Count = Field(16, validation_alias="RELAY_ORIGIN_CONCURRENCY")
    breaker_failures: Count = Field(10, validation_alias="RELAY_BREAKER_FAILURES")
    breaker_cooldown: Seconds = Field(30.0, validation_alias="RELAY_BREAKER_COOLDOWN")
    # Operators' and tests' knobs (RELAY_METRICS_PORT and RELAY_LINK_REFRESH are SPEC's too).
    metrics_port: Port = Field(9100, validation_alias="RELAY_METRICS_PORT")  # worker's /metrics
    upstream_timeout: Seconds = Field(10.0, validation_alias="RELAY_UPSTREAM_TIMEOUT")
    # clips older than this are fetched again before an attempt
    link_refresh: Seconds = Field(2700.0, validation_alias="RELAY_LINK_REFRESH")
    # attempts in flight per worker; upstream requests in flight per worker
    delivery_concurrency: Count = Field(128, validation_alias="RELAY_DELIVERY_CONCURRENCY")
    poll_concurrency: Count = Field(64, validation_alias="RELAY_POLL_CONCURRENCY")
    # a claimed poll/delivery is taken up again after this (crashes)
    lease: Seconds = Field(25.0, validation_alias="RELAY_LEASE")
    # json when stderr is not a TTY, console on a terminal
    log_format: Annotated[Literal["json", "console"], _text(_log_format)] = Field(
        default_factory=_default_log_format, validation_alias="LOG_FORMAT"
    )

    @model_validator(mode="after")
    def _lease_outlasts_the_timeouts(self) -> Settings:
        if self.lease <= self.delivery_timeout or self.lease <= self.upstream_timeout:
            raise ConfigError(
                "RELAY_LEASE: must be longer than RELAY_DELIVERY_TIMEOUT and RELAY_UPSTREAM_TIMEOUT"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the constructor is given: load() reads the environment and passes it
        # in, so that Settings(...) in code never picks up the process environment and every
        # malformed value goes through ConfigError.
        return (init_settings,)

    def require_api(self) -> None:
        """Check what `clip-relay api` cannot run without."""
        if not self.api_keys:
            raise ConfigError("RELAY_API_KEYS: at least one name:key pair is required")

    def short_api_keys(self) -> list[str]:
        """The tenants whose API key is shorter than MIN_API_KEY characters: guessable (a
        key of 32 random characters, as ``python -c "import secrets;
        print(secrets.token_urlsafe(24))"`` gives, is not)."""
        return [k.tenant for k in self.api_keys if len(k.key) < MIN_API_KEY]

    def require_worker(self) -> None:
        """Check what `clip-relay worker` cannot run without."""
        if not self.scalereach_api_key:
            raise ConfigError("SCALEREACH_API_KEY: required by the worker")


_VARIABLES = {name: str(f.validation_alias) for name, f in Settings.model_fields.items()}
_NAMES = frozenset(_VARIABLES.values())


# read elsewhere, never by Settings: by the operator CLI (``clip-relay watches``), and the
# Redis binary the embedded server runs (relay.devtools.embedded_redis)
_OTHER_NAMES = frozenset({"RELAY_API_URL", "RELAY_API_KEY", "RELAY_REDIS_SERVER"})


def strays(env: Mapping[str, str] | None = None) -> list[str]:
    """The ``RELAY_*`` variables of *env* that are no setting, each with the one it may
    be a misspelling of: ``RELAY_RETRY_SCHEDUEL=1`` was ignored without a word (a tester)."""
    known = _NAMES | _OTHER_NAMES
    out = []
    for name in sorted(os.environ if env is None else env):
        if name.startswith("RELAY_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            out.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return out


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from *env* (default: the process environment)."""
    # only the relay's variables; values stripped, blank ones unset. They reach Settings as
    # constructor values (by their variable names, the fields' aliases): the one source
    # settings_customise_sources keeps, so no private hook of pydantic-settings is needed
    values: dict[str, Any] = {
        name: value.strip()
        for name, value in (os.environ if env is None else env).items()
        if name in _NAMES and value.strip()
    }
    try:
        return Settings(**values)
    except ValidationError as exc:
        message = _first_problem(exc)
    # raised outside the except block: the ConfigError carries no ValidationError (whose text
    # and errors() hold the rejected input, a secret for some variables) as cause or context
    raise ConfigError(message)


def _first_problem(exc: ValidationError) -> str:
    """`NAME: reason` for the first error, built without the rejected input."""
    error = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    reason = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule across variables: its message names them
        return reason
    where = str(error["loc"][0])
    return f"{_VARIABLES.get(where, where)}: {reason}"
