"""What :class:`Client` and :class:`AsyncClient` share: building requests, reading answers,
deciding on retries. No I/O here."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from clip_relay_client._errors import ApiError
from clip_relay_client.webhooks import finite_seconds

__all__ = ["DEFAULT_TIMEOUT", "Call", "Core", "shown_url"]

DEFAULT_TIMEOUT = 10.0  # seconds per request (connect, send, answer each)
RETRY_STATUSES = frozenset({429, 503})
MASK = "***"  # what a URL's password is printed as


@dataclass(frozen=True, slots=True)
class Call:
    """One API request. *retry*: safe to send again (idempotent, or made so by an
    Idempotency-Key)."""

    method: str
    path: str
    retry: bool
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def watch_path(watch_id: str, action: str = "") -> str:
    """The path of a watch (its id quoted: never another route; ``.`` and ``..``, which a
    URL's normalisation would turn into another route, are refused)."""
    if not isinstance(watch_id, str):
        raise TypeError(f"a watch id is a string (wat_...), not {type(watch_id).__name__}")
    if watch_id in ("", ".", ".."):
        raise ValueError(f"not a watch id: {watch_id!r}")
    path = "/v1/watches/" + quote(watch_id, safe="")
    return f"{path}/{action}" if action else path


def rfc3339(value: datetime | str) -> str:
    """A time as the API reads it: RFC 3339 in UTC (an aware datetime, or a string as is)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"a time is an aware datetime or an RFC 3339 string, not {value!r}")
    if value.tzinfo is None:
        raise ValueError("give an aware datetime (e.g. datetime.now(UTC)), not a naive one")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _setting_s(value: object, name: str, positive: bool = False) -> float:
    """A client setting in seconds: a finite number, 0 or more (more than 0 if *positive*);
    ValueError naming it otherwise (a string from an environment variable, say)."""
    what = f"{name} is a finite number of seconds, {'more than' if positive else 'at least'} 0"
    seconds = finite_seconds(value, what)
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{what}, not {value!r}")
    return seconds


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the API asked to wait (``Retry-After``: seconds or an HTTP date), if any."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:  # ("nan" or "inf" from a broken proxy: none asked)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _path(response: httpx.Response) -> str:
    """The path *response* answered ("" for one made without a request)."""
    try:
        return response.request.url.path
    except RuntimeError:
        return ""


def api_error(response: httpx.Response) -> ApiError:
    """The error an answer of status >= 400 stands for (a problem document, or not)."""
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {"status": response.status_code, "title": response.reason_phrase or "Error"}
    errors = doc.get("errors")
    status = doc.get("status")  # (a gateway's JSON may say "error" here: the answer's own)
    detail = doc.get("detail")
    ctype = response.headers.get("content-type") or "no content-type"
    if not ctype.startswith("application/problem+json"):
        # not the relay's answer (its errors are all problem documents): a 404 of another
        # server was read as "no such watch" (a tester), a proxy's 502 page
        hint = (
            f"the answer is not a problem document ({ctype}): is the base URL the relay's, "
            "or is a proxy answering?"
        )
        detail = hint if detail is None else f"{detail} ({hint})"
    elif response.status_code == 404 and "/v1/v1/" in _path(response):
        # (a base URL given with its /v1: every call's path has it twice, a bare 404)
        hint = "the base URL ends in /v1: give the relay's root, e.g. https://relay.example.com"
        detail = hint if detail is None else f"{detail} ({hint})"
    return ApiError(
        status if type(status) is int and status >= 400 else response.status_code,
        str(doc.get("title") or response.reason_phrase or "Error"),
        detail,
        type=doc.get("type"),
        errors=[e for e in errors if isinstance(e, Mapping)] if isinstance(errors, list) else (),
        problem=doc,
        retry_after=retry_after(response),
        request_id=response.headers.get("x-request-id"),
    )


def shown_url(url: str) -> str:
    """*url* as it may be printed (an error's message, a log): a password it carries as
    ``***``, or its user part if it has no password (a token). Raises ValueError if it
    is not an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:  # (its message may quote the URL, password and all)
        raise ValueError("base_url is not a valid URL (e.g. https://relay.example.com)") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("base_url must be an http(s) URL with a host (https://relay.example.com)")
    if parsed.password:
        return str(parsed.copy_with(username=parsed.username, password=MASK))
    if parsed.username:  # a user part alone is often a token
        return str(parsed.copy_with(username=MASK))
    return url


class Core:
    """Settings and the pure parts of the two clients."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required (e.g. https://relay.example.com)")
        self.shown_base = shown_url(base_url).rstrip("/")  # (the URL as it may be printed)
        if not api_key:
            raise ValueError("api_key is required (a key of the relay's RELAY_API_KEYS)")
        self.base_url = base_url.rstrip("/")
        # (None: no timeout, and an httpx.Timeout as it is, as httpx takes them)
        self.timeout = (
            timeout
            if isinstance(timeout, httpx.Timeout)
            else httpx.Timeout(None if timeout is None else _setting_s(timeout, "timeout", True))
        )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries is a whole number, 0 or more, not {max_retries!r}")
        self.max_retries = max_retries
        self.backoff = _setting_s(backoff, "backoff")
        self.max_wait = _setting_s(max_wait, "max_wait")
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": "clip-relay-client/0.1",
        }

    def request(self, call: Call) -> tuple[str, str, dict[str, str], bytes | None]:
        """Method, URL, headers and body of *call*."""
        url = self.base_url + call.path
        headers = dict(call.headers)
        body = None
        if call.body is not None:
            body = json.dumps(call.body, separators=(",", ":"), allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        return call.method, url, headers, body

    def wait_before_retry(
        self, call: Call, tries: int, response: httpx.Response | None, error: Exception | None
    ) -> float | None:
        """Seconds to wait before sending *call* again after try number *tries* ended with
        *response* or *error*; None: do not retry."""
        if tries > self.max_retries:
            return None
        if error is not None:
            # a connection never made carried nothing: any call may go again
            if not (call.retry or isinstance(error, httpx.ConnectError)):
                return None
        elif response is None or response.status_code not in RETRY_STATUSES:
            return None
        elif not call.retry and response.status_code != 429:
            # a 429 did nothing (the relay refuses before it acts: the key's rate, its
            # tenant full, pings in flight): any call may go again; a 503 may come after
            return None
        asked = retry_after(response) if response is not None else None
        if asked is not None and asked > self.max_wait:
            # longer than the caller would wait (a tenant full of live watches asks 60 s):
            # its error at once, with .retry_after, not max_retries waits of max_wait
            return None
        delay = self.backoff * 2.0 ** (tries - 1) * random.uniform(0.5, 1.0)
        if asked is not None:  # at least that long, and spread out: callers told the same
            # Retry-After together would all come back at once (a tester); capped, never
            # below what was asked
            return max(asked, min(asked + delay, self.max_wait))
        if delay > self.max_wait:  # (capped, still spread out)
            delay = self.max_wait * random.uniform(0.8, 1.0)
        return delay

    @staticmethod
    def read(response: httpx.Response) -> Any:
        """The JSON of a successful answer (None for 204); :class:`ApiError` otherwise."""
        if response.status_code >= 400:
            raise api_error(response)
        if response.status_code == 204:
            return None
        try:
            doc = response.json() if response.content else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):  # a proxy's page, say: not the relay's answer
            raise ApiError(
                response.status_code,
                "Not a clip-relay answer",
                f"a {response.status_code} whose body is not a JSON object "
                f"({response.headers.get('content-type') or 'no content-type'}): "
                "is the base URL the relay's?",
            )
        return doc


def create_call(
    *,
    video_id: str,
    callback_url: str,
    min_score: float | None,
    max_score: float | None,
    favorited_only: bool | None,
    sort_by: str | None,
    sort_order: str | None,
    metadata: Mapping[str, Any] | None,
    secret: str | None,
    idempotency_key: str | None,
) -> Call:
    """``POST /v1/watches``: retried only with an Idempotency-Key (the same watch then).
    Raises ValueError for what cannot be sent as asked (it would be dropped or garbled)."""
    if idempotency_key == "":
        raise ValueError("idempotency_key must not be empty (None: no key)")
    for name, score in (("min_score", min_score), ("max_score", max_score)):
        if isinstance(score, float) and not math.isfinite(score):
            raise ValueError(f"{name} must be a finite number, not {score}")
    body: dict[str, Any] = {"videoId": video_id, "callbackUrl": callback_url}
    optional = {
        "minScore": min_score,
        "maxScore": max_score,
        "favoritedOnly": favorited_only,
        "sortBy": sort_by,
        "sortOrder": sort_order,
        # (anything but a mapping is sent as it is: the relay's 422 names the field)
        "metadata": dict(metadata) if isinstance(metadata, Mapping) else metadata,
        "secret": secret,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", "/v1/watches", retry=bool(idempotency_key), body=body, headers=headers)


MAX_PAGE = 100  # watches a page of GET /v1/watches, at most (the API's cap)


def list_call(video_id: str | None, status: str | None, limit: int, cursor: str | None) -> Call:
    """``GET /v1/watches``, one page."""
    params = {"limit": str(limit)}
    if video_id is not None:
        params["videoId"] = video_id
    if status is not None:
        params["status"] = status
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/watches", retry=True, params=params)


def recover_answer(answer: Mapping[str, Any]) -> tuple[int, str | None]:
    """A recover's answer: how many it put back, and the ``until`` to send the request
    again with (its range's end: the range stays put) while the relay says ``more``;
    None: done."""
    again = answer.get("until") if answer.get("more") is True else None
    return int(answer["count"]), None if again is None else str(again)


def recover_call(since: datetime | str, until: datetime | str | None) -> Call:
    """``POST /v1/watches/recover``: safe to send twice (a watch put back is skipped)."""
    body = {"since": rfc3339(since)}
    if until is not None:
        body["until"] = rfc3339(until)
    return Call("POST", "/v1/watches/recover", retry=True, body=body)
