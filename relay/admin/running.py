"""What the operator commands that talk to Redis themselves (``clip-relay upstream``,
``clip-relay secrets``) share: loading the configuration, running one action, and saying in
one line why it failed -- a configuration error (exit 2), Redis refusing, silent or away
(exit 1), never the URL's password."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeout

from relay.settings import ConfigError, Settings, url_passwords

# an action, given its name and the configuration: what to print, or that and the exit
# status (a text alone: 0)
Action = Callable[[str, Settings], Coroutine[Any, Any, str | tuple[str, int]]]


def run(
    command: str,
    name: str,
    action: Action,
    settings: Callable[[], Settings],
    *,
    hints: Mapping[str, str] | None = None,
) -> int:
    """Run *action* *name* of ``clip-relay`` *command* with the configuration *settings*
    loads and print what it says; the exit status. *hints*: per action name, what to tell
    the operator when it failed half-way (said after the error)."""
    hint = (hints or {}).get(name, "")
    try:
        loaded = settings()
    except ConfigError as exc:
        print(f"clip-relay: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        said = asyncio.run(action(name, loaded))
    # (the URL is not echoed: it may hold a password)
    # reached, and refused (a wrong db index or password, an ACL, still loading its data)
    except (ResponseError, AuthenticationError, AuthorizationError, BusyLoadingError) as exc:
        return _failed(command, f"Redis error: {_reason(exc, loaded)}", hint)
    except (RedisTimeout, TimeoutError) as exc:
        return _failed(command, f"no answer from Redis: {_reason(exc, loaded)}", hint)
    except (RedisError, OSError) as exc:
        return _failed(command, f"cannot reach Redis: {_reason(exc, loaded)}", hint)
    except KeyboardInterrupt:
        return _failed(command, "interrupted", hint) + 129  # (130: the shell's for Ctrl-C)
    text, status = (said, 0) if isinstance(said, str) else said
    print(text)
    return status


def where(url: str) -> str:
    """Which Redis *url* names, for people: its scheme, hosts and path (a database, a
    Sentinel master) -- never its user info or query (a password may be in either)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _failed(command: str, why: str, hint: str) -> int:
    print(f"clip-relay {command}: {why}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    return 1


def _reason(exc: BaseException, settings: Settings) -> str:
    """What went wrong talking to Redis: the error and its message (the address, the
    errno: redis-py says them; the URL's password never, should a message carry it)."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    # (a message has none of it; a short password would only blank out innocent digits)
    for password in url_passwords(settings.redis_url):
        if len(password) >= 6:
            text = text.replace(password, "***")
    return text
