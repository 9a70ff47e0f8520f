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
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from relay.domain.origin import CallbackAllow, IPNetwork
from relay.envtext import (
    TENANT,
    Allow,
    ApiKey,
    ApiKeys,
    Count,
    DnsServers,
    Fraction,
    HttpUrl,
    LogFormat,
    Networks,
    Pause,
    Port,
    RedisUrl,
    Schedule,
    Seconds,
    SecretsKey,
    Switch,
    Token,
    url_passwords,
)

__all__ = ["ApiKey", "CallbackAllow", "ConfigError", "IPNetwork", "Settings", "load"]
__all__ += ["MIN_API_KEY", "strays", "url_passwords"]

MIN_API_KEY = 16  # characters: a shorter API key is warned about at start (guessable)


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


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

    redis_url: RedisUrl = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    scalereach_base_url: HttpUrl = Field(
        "https://api.scalereach.ai", validation_alias="SCALEREACH_BASE_URL"
    )
    scalereach_api_key: Token = Field("", validation_alias="SCALEREACH_API_KEY", repr=False)
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
    secrets_key: SecretsKey = Field("", validation_alias="RELAY_SECRETS_KEY", repr=False)
    # the dashboard (/ui/): on or off, its session length, the key of its session cookies
    # (empty: each process makes its own, which serves one replica only)
    ui: Switch = Field(True, validation_alias="RELAY_UI")
    ui_session: Seconds = Field(43200.0, validation_alias="RELAY_UI_SESSION")
    ui_secret: Token = Field("", validation_alias="RELAY_UI_SECRET", repr=False)
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
    log_format: LogFormat = Field(
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

    def odd_tenant_names(self) -> list[str]:
        """The tenant names outside letters, digits, '.', '_', '-' (64 at most): they work,
        but name Redis keys, log fields and pages (warned about at start)."""
        return sorted({k.tenant for k in self.api_keys if not TENANT.fullmatch(k.tenant)})

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
