"""Configuration: ``relay.settings.load`` against SPEC.md's table, and the CLI's exit codes."""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError

from relay.settings import ApiKey, CallbackAllow, ConfigError, Settings, load, strays

ROOT = Path(__file__).resolve().parent.parent
FERNET_KEY = "x" * 43 + "="  # url-safe base64 of 32 bytes


# --- defaults ---------------------------------------------------------------------------


def test_defaults_match_spec_table() -> None:
    s = load({})
    assert s.scalereach_base_url == "https://api.scalereach.ai"
    assert s.scalereach_api_key == ""
    assert s.api_keys == ()
    assert s.host == "0.0.0.0"
    assert s.port == 8080
    assert s.callback_allow == CallbackAllow()
    assert s.callback_allow.networks == ()
    assert s.callback_allow.hosts == frozenset()
    assert s.poll_interval == 10
    assert s.watch_timeout == 21600
    assert s.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert s.delivery_timeout == 15
    assert s.render_timeout == 1800
    assert s.upstream_rps == 20
    assert s.shutdown_grace == 20
    assert s.rate_limit == 50
    assert s.secret_grace == 86400
    assert s.secrets_key == ""
    assert s.retention == 604800
    assert s.redis_high_water == 0.9
    assert s.tenant_max_watches == 100000
    assert s.dns_servers == ()
    assert s.origin_concurrency == 16
    assert s.breaker_failures == 10
    assert s.breaker_cooldown == 30
    # json when stderr is not a TTY (as under pytest), console on a terminal
    assert s.log_format == ("console" if sys.stderr.isatty() else "json")


def test_load_reads_only_the_given_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "9999")
    assert load({}).port == 8080
    assert load().port == 9999


def test_blank_values_count_as_unset() -> None:
    s = load({"RELAY_PORT": "", "RELAY_POLL_INTERVAL": "   ", "RELAY_API_KEYS": " "})
    assert s.port == 8080
    assert s.poll_interval == 10
    assert s.api_keys == ()


def test_a_rate_limit_is_whole_requests_per_second() -> None:
    """Counted in one-second windows: a fraction would admit fewer than it says (0.5: none
    at all), so it is refused at start-up, naming the variable (a review, 2026-12-06)."""
    for bad in ("0.5", "1.5", "0"):
        with pytest.raises(ConfigError, match=r"^RELAY_RATE_LIMIT"):
            load({"RELAY_RATE_LIMIT": bad})


def test_secrets_are_not_in_repr() -> None:
    s = load(
        {
            "SCALEREACH_API_KEY": "sr_live_" + "cd" * 24,
            "RELAY_API_KEYS": "acme:very-secret-key-1",
            "RELAY_SECRETS_KEY": FERNET_KEY,
        }
    )
    text = repr(s)
    assert "cd" * 24 not in text
    assert "very-secret-key-1" not in text
    assert FERNET_KEY not in text


def test_settings_built_in_code_never_echo_a_secret_in_errors() -> None:
    """Settings(...) in code (tests, tools) raises pydantic's ValidationError, not ConfigError:
    its text must not repeat the values given either (a model-level error carries them all)."""
    secret = "sr_live_" + "ef" * 24
    for kwargs in (
        {"scalereach_api_key": secret, "lease": 1},  # the cross-variable rule fails
        {"scalereach_api_key": secret + " x"},  # the key itself is malformed
        {"api_keys": (ApiKey("acme", secret),), "port": "not a port"},
    ):
        with pytest.raises(ValidationError) as info:
            Settings(**kwargs)
        text = str(info.value) + repr(info.value)
        # pydantic shortens long inputs in its text ('sr_l...efef'): look for any piece
        assert not any(secret[i : i + 8] in text for i in range(len(secret) - 7)), text


# --- every variable parsed -------------------------------------------------------------


def test_every_variable_parsed() -> None:
    s = load(
        {
            "REDIS_URL": "rediss://user:pw@redis.example:6380/2",
            "SCALEREACH_BASE_URL": "http://127.0.0.1:8090/",
            "SCALEREACH_API_KEY": "  sr_live_" + "ef" * 24 + "\n",
            "RELAY_API_KEYS": "acme:key-one, globex : key-two ,",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": "0",
            "RELAY_CALLBACK_ALLOW": "10.0.0.0/8, 127.0.0.1/32,fd00::/8,Internal.SVC.,hooks-1.local",
            "RELAY_POLL_INTERVAL": "0.25",
            "RELAY_WATCH_TIMEOUT": "1.5",
            "RELAY_RETRY_SCHEDULE": "0.1, 0.2,0,1.5",
            "RELAY_DELIVERY_TIMEOUT": "0.75",
            "RELAY_RENDER_TIMEOUT": "2.5",
            "RELAY_UPSTREAM_RPS": "3",
            "RELAY_SHUTDOWN_GRACE": "0.3",
            "RELAY_RATE_LIMIT": "12",
            "RELAY_SECRET_GRACE": "3.25",
            "RELAY_SECRETS_KEY": FERNET_KEY,
            "LOG_FORMAT": "console",
            "RELAY_METRICS_PORT": "9200",
            "RELAY_UPSTREAM_TIMEOUT": "0.5",
            "RELAY_LINK_REFRESH": "60.5",
            "RELAY_DELIVERY_CONCURRENCY": "7",
            "RELAY_POLL_CONCURRENCY": "3",
            "RELAY_LEASE": "1.5",
        }
    )
    assert s.redis_url == "rediss://user:pw@redis.example:6380/2"
    assert s.scalereach_base_url == "http://127.0.0.1:8090"  # trailing slash dropped
    assert s.scalereach_api_key == "sr_live_" + "ef" * 24  # surrounding whitespace stripped
    assert s.api_keys == (ApiKey("acme", "key-one"), ApiKey("globex", "key-two"))
    assert s.host == "127.0.0.1"
    assert s.port == 0
    assert s.callback_allow.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert s.callback_allow.hosts == frozenset({"internal.svc", "hooks-1.local"})
    assert s.poll_interval == 0.25
    assert s.watch_timeout == 1.5
    assert s.retry_schedule == (0.1, 0.2, 0.0, 1.5)
    assert s.delivery_timeout == 0.75
    assert s.render_timeout == 2.5
    assert s.upstream_rps == 3
    assert s.shutdown_grace == 0.3
    assert s.rate_limit == 12
    assert s.secret_grace == 3.25
    assert s.secrets_key == FERNET_KEY
    assert s.log_format == "console"
    assert s.metrics_port == 9200
    assert s.upstream_timeout == 0.5
    assert s.link_refresh == 60.5
    assert s.delivery_concurrency == 7
    assert s.poll_concurrency == 3
    assert s.lease == 1.5


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://127.0.0.1:6379/0", 0),
        ("redis://127.0.0.1:6379/", 0),  # (arq's own reading of it failed: int(''))
        ("redis://:p%40ss@127.0.0.1:6379/3", 3),
        ("rediss://127.0.0.1/2", 2),
        ("unix:///run/redis.sock?db=1", 1),
        ("redis://127.0.0.1:6379/4?socket_timeout=2&client_name=relay&password=p%40ss", 4),
        ("rediss://127.0.0.1/0?ssl_cert_reqs=none&health_check_interval=10", 0),
    ],
)
def test_redis_url_schemes(url: str, db: int) -> None:
    """A REDIS_URL accepted is read alike by the relay's connections and by arq's."""
    from relay.store.connection import arq_settings

    assert load({"REDIS_URL": url}).redis_url == url
    assert arq_settings(url).database == db


@pytest.mark.parametrize(
    "url",
    [
        "redis://:ab[s3cr3t]cd@127.0.0.1:6379/0",
        "redis://u:s3cr3t@127.0.0.1:bad/0",
        "redis://u:s3cr3t@127.0.0.1/x",
        "redis://u:s3cr3t@127.0.0.1/0?db=x",
    ],
)
def test_a_bad_redis_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"REDIS_URL": url})
    assert "s3cr3t" not in str(info.value) and str(info.value).startswith("REDIS_URL:")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("socket_timeout=abc", "the query option socket_timeout has a value that is not valid"),
        ("health_check_interval=often", "the query option health_check_interval has a value"),
        ("s3cr3t=1", "not one of redis-py's connection options"),
        ("socket_timout=2", "not one of redis-py's connection options"),
        ("retry=x", "not one of redis-py's connection options"),  # (a keyword, not a string)
        ("encoding=nope", "not one of redis-py's connection options"),
    ],
)
def test_a_redis_url_query_option_is_checked_at_start(query: str, says: str) -> None:
    """A query option the connections would fail on when they connect (an unknown name is
    passed on to the connection class: a TypeError at the first command) or a value that
    does not parse is a configuration error naming the option -- a known one; an unknown
    name is never echoed (it might be anything). Before: the port's message, or a start
    that failed later with a traceback."""
    with pytest.raises(ConfigError) as info:
        load({"REDIS_URL": f"redis://u:pw@127.0.0.1:6379/0?{query}"})
    assert says in str(info.value) and "s3cr3t" not in str(info.value)
    assert "port" not in str(info.value)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_format(fmt: str) -> None:
    assert load({"LOG_FORMAT": fmt}).log_format == fmt


def test_callback_allow_with_host_bits_is_refused_naming_the_network() -> None:
    """``10.1.2.3/8`` was read as ``10.0.0.0/8``: a typo for one host opened a network to
    every tenant's callbacks. It is refused, naming the network meant (as
    RELAY_TRUSTED_PROXIES refuses it); the network itself and a plain address are taken.
    (A configuration tester, 2026-12-07.)"""
    with pytest.raises(ConfigError, match=r"RELAY_CALLBACK_ALLOW: .*host bits set.*10\.0\.0\.0/8"):
        load({"RELAY_CALLBACK_ALLOW": "10.1.2.3/8"})
    allow = load({"RELAY_CALLBACK_ALLOW": "10.0.0.0/8,10.1.2.3"}).callback_allow
    assert allow.networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("10.1.2.3/32"),
    )
    assert allow.hosts == frozenset()


def test_odd_values_an_operator_could_mistype_are_refused() -> None:
    """Each was taken silently (a configuration tester, 2026-12-07): a base URL without a
    host or with a space, a duration of 1e300 (no watch would ever expire), ``1_000`` (read
    by Python as 1000, by an operator's tools maybe not), a tenant name with a space or
    a brace is warned about instead (see the start's warnings: a deployment's watches are
    stored under its tenants' names)."""
    cases = {
        "SCALEREACH_BASE_URL": ["http://", "http://127.0.0.1:1/ x"],
        "RELAY_WATCH_TIMEOUT": ["1e300"],
        "RELAY_SHUTDOWN_GRACE": ["1e300"],
        "RELAY_POLL_INTERVAL": ["1_000"],
        "RELAY_RATE_LIMIT": ["1_000"],
        "RELAY_PORT": ["8_080"],
        "RELAY_CALLBACK_ALLOW": ["fe80::1%eth0/64"],
    }
    for name, values in cases.items():
        for value in values:
            with pytest.raises(ConfigError, match=rf"^{name}: ") as got:
                load({name: value})
            assert "k" * 24 not in str(got.value)
    assert load({"RELAY_RETENTION": str(5 * 365 * 86400)}).retention == 5 * 365 * 86400
    allow = load({"RELAY_CALLBACK_ALLOW": "fe80::1%eth0,::1,fd00::/8"}).callback_allow
    assert len(allow.networks) == 3


def test_api_key_may_contain_a_colon() -> None:
    (key,) = load({"RELAY_API_KEYS": "acme:abc:def"}).api_keys
    assert key == ApiKey("acme", "abc:def")


def test_zero_allowed_where_a_pause_may_be_zero() -> None:
    s = load({"RELAY_RENDER_TIMEOUT": "0", "RELAY_SHUTDOWN_GRACE": "0", "RELAY_SECRET_GRACE": "0"})
    assert (s.render_timeout, s.shutdown_grace, s.secret_grace) == (0, 0, 0)


def test_require_api_and_worker() -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_API_KEYS"):
        load({}).require_api()
    with pytest.raises(ConfigError, match=r"^SCALEREACH_API_KEY"):
        load({}).require_worker()
    with pytest.raises(ConfigError, match=r"^SCALEREACH_API_KEY"):
        load({"SCALEREACH_API_KEY": "  "}).require_worker()
    ok = load({"RELAY_API_KEYS": "a:k1", "SCALEREACH_API_KEY": "sr_live_x"})
    ok.require_api()
    ok.require_worker()
    with pytest.raises(ConfigError, match=r"^RELAY_API_KEYS"):
        Settings().require_api()


# --- malformed values ------------------------------------------------------------------

MALFORMED = [
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "localhost:6379"),
    ("REDIS_URL", "redis://:pw@127.0.0.1:notaport/0"),
    ("REDIS_URL", "redis://127.0.0.1:6379/abc"),
    ("REDIS_URL", "redis://127.0.0.1:99999/0"),
    ("REDIS_URL", "redis:///0"),
    ("SCALEREACH_BASE_URL", "ftp://api.scalereach.ai"),
    ("SCALEREACH_BASE_URL", "api.scalereach.ai"),
    ("RELAY_PORT", "abc"),
    ("RELAY_PORT", "70000"),
    ("RELAY_PORT", "-1"),
    ("RELAY_PORT", "80.5"),
    ("RELAY_CALLBACK_ALLOW", "10.0.0.0/33"),
    ("RELAY_CALLBACK_ALLOW", "10.0.0.0/8,not a host"),
    ("RELAY_CALLBACK_ALLOW", "hooks.example/path"),
    ("RELAY_POLL_INTERVAL", "abc"),
    ("RELAY_POLL_INTERVAL", "0"),
    ("RELAY_POLL_INTERVAL", "-1"),
    ("RELAY_POLL_INTERVAL", "nan"),
    ("RELAY_POLL_INTERVAL", "inf"),
    ("RELAY_POLL_INTERVAL", "10s"),
    ("RELAY_WATCH_TIMEOUT", "6h"),
    ("RELAY_WATCH_TIMEOUT", "0"),
    ("RELAY_RETRY_SCHEDULE", "5,abc,10"),
    ("RELAY_RETRY_SCHEDULE", ",,,"),
    ("RELAY_RETRY_SCHEDULE", "1,,2"),  # (a delay left out: a typo; a tester found it read as 1,2)
    ("RELAY_RETRY_SCHEDULE", "5;10"),
    ("RELAY_RETRY_SCHEDULE", "5,-1"),
    ("RELAY_DELIVERY_TIMEOUT", "fast"),
    ("RELAY_DELIVERY_TIMEOUT", "0"),
    ("RELAY_RENDER_TIMEOUT", "-0.5"),
    ("RELAY_RENDER_TIMEOUT", "x"),
    ("RELAY_UPSTREAM_RPS", "0"),
    ("RELAY_UPSTREAM_RPS", "many"),
    ("RELAY_UPSTREAM_RPS", "0.5"),  # (whole: it ran at 1 a second, a review found)
    ("RELAY_UPSTREAM_RPS", "1.5"),
    ("RELAY_SHUTDOWN_GRACE", "-1"),
    ("RELAY_RATE_LIMIT", "0"),
    ("RELAY_RATE_LIMIT", "1e400"),
    ("RELAY_SECRET_GRACE", "1d"),
    ("LOG_FORMAT", "yaml"),
    ("LOG_FORMAT", "text"),
    ("RELAY_METRICS_PORT", "http"),
    ("RELAY_UPSTREAM_TIMEOUT", "0"),
    ("RELAY_LINK_REFRESH", "soon"),
    ("RELAY_DELIVERY_CONCURRENCY", "0"),
    ("RELAY_DELIVERY_CONCURRENCY", "2.5"),
    ("RELAY_POLL_CONCURRENCY", "-3"),
    ("RELAY_LEASE", "abc"),
    ("RELAY_RETENTION", "0"),
    ("RELAY_RETENTION", "week"),
    ("RELAY_REDIS_HIGH_WATER", "0"),
    ("RELAY_REDIS_HIGH_WATER", "1.5"),
    ("RELAY_TENANT_MAX_WATCHES", "0"),
    ("RELAY_DNS_SERVERS", "dns.example"),
    ("RELAY_DNS_SERVERS", "10.0.0.1:99999"),
    ("RELAY_DNS_SERVERS", "[::1]x"),
    ("RELAY_DNS_SERVERS", "10.0.0.1,10.0.0.1"),  # the same server twice (a tester, 12-07)
    ("RELAY_DNS_SERVERS", "10.0.0.1, 10.0.0.1:53"),
    ("RELAY_DNS_SERVERS", "::1,[::1]:53"),
    ("RELAY_ORIGIN_CONCURRENCY", "0"),
    ("RELAY_ORIGIN_CONCURRENCY", "many"),
    ("RELAY_BREAKER_FAILURES", "0"),
    ("RELAY_BREAKER_FAILURES", "1.5"),
    ("RELAY_BREAKER_COOLDOWN", "0"),
    ("RELAY_BREAKER_COOLDOWN", "-1"),
    ("RELAY_TRUSTED_PROXIES", "ingress"),
    ("RELAY_TRUSTED_PROXIES", "10.0.0.1/8"),  # host bits: a typo widening the trust
    ("RELAY_TRUSTED_PROXIES", "10.0.0.0/8;10.1.0.0/16"),
    ("RELAY_TRUSTED_PROXIES", "0.0.0.0/0"),  # every address
    ("RELAY_TRUSTED_PROXIES", "::/0"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert "\n" not in message


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_lease_must_outlast_the_timeouts() -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_LEASE") as info:
        load({"RELAY_LEASE": "2", "RELAY_DELIVERY_TIMEOUT": "2"})
    assert "RELAY_DELIVERY_TIMEOUT" in str(info.value)
    with pytest.raises(ConfigError, match=r"^RELAY_LEASE"):
        load({"RELAY_LEASE": "5", "RELAY_UPSTREAM_TIMEOUT": "6"})
    ok = {"RELAY_LEASE": "2.5", "RELAY_DELIVERY_TIMEOUT": "2", "RELAY_UPSTREAM_TIMEOUT": "1"}
    assert load(ok).lease == 2.5


SECRET = "S3cr3t-Value-do-not-echo-0123456789"


@pytest.mark.parametrize(
    "value",
    [
        SECRET,  # a bare key without its name
        f"acme:key-one,{SECRET}",
        f"acme:{SECRET},broken",
        f":{SECRET}",
        f"acme:{SECRET},globex:{SECRET}",  # the same key twice
        f"acme:   ,other:{SECRET}",
        f"acme:{SECRET};globex:key-one",  # two entries run together (a review, 2026-12-07)
    ],
)
def test_malformed_api_keys_never_echo_a_key(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"RELAY_API_KEYS": value})
    message = str(info.value)
    assert message.startswith("RELAY_API_KEYS:")
    assert SECRET not in message
    assert "key-one" not in message


@pytest.mark.parametrize(
    "value",
    [SECRET, "x" * 44, "not base64 at all " + SECRET, FERNET_KEY[:-2] + "=="],
)
def test_malformed_secrets_key_never_echoes_it(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"RELAY_SECRETS_KEY": value})
    message = str(info.value)
    assert message.startswith("RELAY_SECRETS_KEY:")
    assert value not in message
    assert SECRET not in message


@pytest.mark.parametrize("value", [f"sr_live_ab\n{SECRET}", f"sr_live_ab\r{SECRET}"])
def test_malformed_upstream_key_is_refused_without_echo(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"SCALEREACH_API_KEY": value})
    message = str(info.value)
    assert message.startswith("SCALEREACH_API_KEY:")
    assert SECRET not in message


def test_require_worker_message_has_no_secret() -> None:
    s = load({"RELAY_API_KEYS": f"acme:{SECRET}", "RELAY_SECRETS_KEY": FERNET_KEY})
    with pytest.raises(ConfigError) as info:
        s.require_worker()
    assert SECRET not in str(info.value)
    assert FERNET_KEY not in str(info.value)


# --- the CLI ---------------------------------------------------------------------------


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=clean,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_cli_api_without_keys_exits_2() -> None:
    proc = _run("api")
    assert proc.returncode == 2, proc.stderr
    assert "RELAY_API_KEYS" in _one_line(proc.stderr)
    assert proc.stdout == ""


def test_cli_malformed_poll_interval_exits_2() -> None:
    proc = _run("api", RELAY_API_KEYS=f"acme:{SECRET}", RELAY_POLL_INTERVAL="abc")
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "RELAY_POLL_INTERVAL" in line
    assert SECRET not in proc.stderr


def test_cli_malformed_api_keys_does_not_echo_them() -> None:
    proc = _run("api", RELAY_API_KEYS=f"acme:key-one,{SECRET}")
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "RELAY_API_KEYS" in line
    assert SECRET not in proc.stderr
    assert "key-one" not in proc.stderr


def test_cli_worker_without_upstream_key_exits_2() -> None:
    proc = _run("worker", RELAY_API_KEYS="acme:k1")
    assert proc.returncode == 2, proc.stderr
    assert "SCALEREACH_API_KEY" in _one_line(proc.stderr)


def test_cli_help_lists_every_command() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("api", "worker", "upstream-sim", "receiver", "demo"):
        assert command in proc.stdout
    assert "clip-relay" in proc.stdout


def test_cli_without_command_is_a_usage_error() -> None:
    proc = _run()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_trusted_proxies_are_addresses_and_networks() -> None:
    s = load({"RELAY_TRUSTED_PROXIES": " 10.2.3.4, 10.8.0.0/16 ,fd00::/8,,"})
    assert [str(n) for n in s.trusted_proxies] == ["10.2.3.4/32", "10.8.0.0/16", "fd00::/8"]
    assert load({}).trusted_proxies == ()


def test_dns_servers_are_ip_and_optional_port() -> None:
    s = load({"RELAY_DNS_SERVERS": " 127.0.0.1:5353, 10.0.0.2 ,[::1]:53,::2"})
    assert s.dns_servers == ("127.0.0.1:5353", "10.0.0.2", "[::1]:53", "::2")
    # one address on two ports: two servers
    assert load({"RELAY_DNS_SERVERS": "127.0.0.1:5353,127.0.0.1"}).dns_servers == (
        "127.0.0.1:5353",
        "127.0.0.1",
    )


def test_short_api_keys_are_warned_about_naming_tenants_not_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API key shorter than 16 characters can be guessed: `clip-relay api` starts (a
    deployment is not broken by an upgrade) but warns, naming the tenants, never a key."""
    from relay import cli, logs

    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs._Output, "stream", None)
    try:
        _short_keys_warned(monkeypatch, capsys, cli._settings)
    finally:  # (the logging set up for the command is this process' own)
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level


def _short_keys_warned(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: Callable[[str], Settings],
) -> None:
    monkeypatch.setenv("RELAY_API_KEYS", f"acme:short-key-1,globex:{SECRET}")
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert [k.tenant for k in load().api_keys] == ["acme", "globex"]
    assert load().short_api_keys() == ["acme"]
    settings("api")
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "api keys short enough to guess" in logged and "acme" in logged
    assert "globex" not in logged and "short-key-1" not in logged and SECRET not in logged
    # (an operator's review: a Secret re-created without RELAY_SECRETS_KEY starts every pod,
    # which then stores secrets plain and cannot open the sealed ones -- said at each start)
    assert "RELAY_SECRETS_KEY is not set" in logged
    monkeypatch.setenv("RELAY_API_KEYS", f"globex:{SECRET}")
    monkeypatch.setenv("RELAY_SECRETS_KEY", FERNET_KEY)
    settings("api")
    quiet = "".join(capsys.readouterr())
    assert "short enough" not in quiet and "RELAY_SECRETS_KEY is not set" not in quiet
    # a one-letter dashboard secret and an allow list of every address are said at start,
    # the secret itself never (a configuration tester, 2026-12-07)
    monkeypatch.setenv("RELAY_UI_SECRET", "x")
    monkeypatch.setenv("RELAY_CALLBACK_ALLOW", "0.0.0.0/0")
    monkeypatch.setenv("RELAY_API_KEYS", f"globex:{SECRET},ac me:{SECRET}x")
    settings("api")
    said = "".join(capsys.readouterr())
    assert "RELAY_UI_SECRET is short enough to guess" in said
    assert "RELAY_CALLBACK_ALLOW opens every address" in said
    assert "tenant names other than letters" in said and "ac me" in said
    assert SECRET not in said


def test_a_relay_variable_that_is_no_setting_is_named_with_its_near_miss(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``RELAY_RETRY_SCHEDUEL=1`` started the API on the default schedule without a word (a
    tester): a ``RELAY_*`` variable that is no setting is warned about, with the setting
    it may be a misspelling of; the operator CLI's own two are settings too."""
    from relay import cli, logs

    env = {"RELAY_RETRY_SCHEDUEL": "1", "RELAY_API_URL": "x", "RELAY_API_KEY": "y"}
    env |= {"RELAY_REDIS_SERVER": "/usr/bin/redis-server"}  # (the embedded server's binary)
    env |= {"RELAY_WHATEVER": "2", "RELAY_PORT": "8080", "OTHER_RELAY_THING": "3"}
    assert strays(env) == [
        "RELAY_RETRY_SCHEDUEL (did you mean RELAY_RETRY_SCHEDULE?)",
        "RELAY_WHATEVER",
    ]
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs._Output, "stream", None)
    monkeypatch.setenv("RELAY_API_KEYS", f"globex:{SECRET}")
    monkeypatch.setenv("RELAY_RETRY_SCHEDUEL", "1")
    monkeypatch.setenv("LOG_FORMAT", "json")
    try:
        cli._settings("api")
    finally:
        structlog.configure(**saved)
        root.handlers[:], root.level = handlers, level
    out = capsys.readouterr()
    assert "not a setting: ignored" in out.out + out.err
    assert "did you mean RELAY_RETRY_SCHEDULE?" in out.out + out.err


def test_a_retry_schedule_may_end_with_a_comma() -> None:
    """``5,300,`` was accepted before empty delays were refused: it still is (a trailing
    comma, as lists are often written); ``1,,2`` is not."""
    assert load({"RELAY_RETRY_SCHEDULE": "5,300,"}).retry_schedule == (5.0, 300.0)
    with pytest.raises(ConfigError, match="none left empty"):
        load({"RELAY_RETRY_SCHEDULE": "1,,2"})
