"""The bytes of a delivery on the wire: the request's head, and the answer read as it arrives.

A delivery is always the same request -- ``POST``, a few fixed headers, a body of bytes -- so
:class:`Target` prepares its first lines once per callback URL. The answer is parsed by
:class:`AnswerReader` as its bytes come in, by llhttp (``httptools``; it took the place of a
hand-written parser: 0.4 against 1.8 µs an answer, docs/performance.md): the status line, the
headers the outcome needs (``Content-Length``, ``Transfer-Encoding``, ``Retry-After``; llhttp
decides keep-alive), then a ``Content-Length``, chunked or read-until-close body. Interim 1xx
answers are skipped; the first ``keep`` bytes of the body are kept, and a body larger than
``MAX_DRAIN`` is not read to its end (the connection is closed instead); a head over
``MAX_HEAD`` bytes fails the attempt.

:class:`AnswerReader` is the base class of the keep-alive connection
(:class:`relay.http.pool.Connection`) rather than a set of functions over a buffer: parsing
works on the connection's own buffers and state, and a base class keeps it in its own module
without one more call, allocation or attribute lookup per request (the client's hot path,
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

import httptools
from yarl import URL

from relay.domain.origin import Origin, origin_of

USER_AGENT = "clip-relay/1"
MAX_HEAD = 64 * 1024  # bytes of status line and headers an answer may have
MAX_DRAIN = 64 * 1024  # bodies up to this size are read to their end to keep the connection


class WebhookError(Exception):
    """A delivery attempt failed before an answer; the message is safe to record."""


@dataclass(slots=True, frozen=True)
class Target:
    """A callback URL prepared for sending: where to connect, and the request's first lines."""

    origin: Origin
    server_hostname: str | None  # for TLS
    head: bytes  # request line, Host, User-Agent, Authorization from the URL's user info

    @classmethod
    def of(cls, url: URL) -> Target:
        """Prepare *url* (absolute ``http``/``https``, as :meth:`CallbackPolicy.parse` checked)."""
        scheme, host, port = origin_of(url)
        host_header = f"[{host}]" if ":" in host else host
        if not url.is_default_port():
            host_header = f"{host_header}:{port}"
        path = url.raw_path_qs or "/"
        if any(ch <= " " or ch == "\x7f" for ch in path + host_header):
            raise ValueError("callback URL has characters a request line cannot carry")
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}"]
        lines.append(f"User-Agent: {USER_AGENT}")
        if url.raw_user is not None or url.raw_password is not None:  # (https://:TOKEN@h/)
            cred = f"{url.user or ''}:{url.password or ''}".encode()
            lines.append(f"Authorization: Basic {base64.b64encode(cred).decode()}")
        head = ("\r\n".join(lines) + "\r\n").encode("ascii")
        return cls((scheme, host, port), host if scheme == "https" else None, head)


@dataclass(slots=True)
class Answer:
    """What a receiver answered."""

    status: int
    body: bytes  # the first ``keep`` bytes of the body
    retry_after: str | None


class AnswerReader:
    """The answer to the one request in flight on a connection, parsed as its bytes arrive by
    llhttp (``httptools``: the parser of Node and uvicorn) -- status line, headers,
    ``Content-Length``, chunked and read-until-close bodies, interim 1xx answers.

    The connection subclass hands what the socket gives to :meth:`_feed`, calls
    :meth:`_until_close` when the connection closes, and provides :meth:`close`; the answer
    resolves the ``_answer`` future.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._body = bytearray()
        self._answer: asyncio.Future[Answer] | None = None
        # one parser for the connection's life: answers follow each other on it (a connection
        # whose answer was not one is closed)
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        """Ready to read the answer to a new request."""
        self._got_bytes = False
        self._head_done = False
        self._head_bytes = 0
        self._interim = False
        self._complete = False
        self._trailing = False  # bytes came after the answer: the connection is out of step
        self._status = 0
        self._retry_after: str | None = None
        self._keep_alive = True
        self._length: int | None = None  # the declared Content-Length
        self._chunked = False
        self._body.clear()
        self._seen = 0  # body bytes received
        self._fed = 0  # bytes of this answer fed to the parser
        self._progress = 0  # ... as of its head's end or its last body bytes

    def close(self) -> None:
        """Close the connection at once (the connection subclass does it)."""
        raise NotImplementedError

    # --- feeding ----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse the next bytes of the answer; :class:`WebhookError` when they are not one."""
        if self._complete:
            self._trailing = True  # nothing was asked: the connection is out of step
            return
        if not self._head_done:
            self._head_bytes += len(data)
        self._fed += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self._complete:  # what followed a full answer is not ours to judge
                self._trailing = True
                return
            raise WebhookError(_malformed(exc)) from None
        if not self._head_done and self._head_bytes > MAX_HEAD:
            raise WebhookError("http: answer headers too large")
        # after the head, bytes that bring no body (chunk trailers or extensions without
        # end: llhttp's caller buffers a header line whole) are held to the head's limit
        if self._head_done and not self._complete and self._fed - self._progress > MAX_HEAD:
            raise WebhookError("http: answer trailers too large")

    def _until_close(self) -> bool:
        """The connection closed: an answer whose body runs until then is complete."""
        if self._head_done and not self._complete and self._length is None and not self._chunked:
            self._complete = True
            self._keep_alive = False
            self._finish()
            return True
        return False

    # --- llhttp's callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._trailing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            self._length = int(value)  # llhttp has checked it
        elif n == 11 and name.lower() == b"retry-after":
            self._retry_after = value.strip().decode("latin-1")
        elif n == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the final one follows (101: llhttp fails)
            self._interim = True
            self._retry_after, self._length, self._chunked = None, None, False
            return
        self._status = status
        self._head_done = True
        self._progress = self._fed

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        room = self.keep - len(self._body)
        if room > 0:
            self._body += body[:room]
        self._seen += len(body)
        self._progress = self._fed
        # a body too large to drain (judged by its declared size, else by what came): once
        # enough of it is kept, answer and close the connection
        size = self._seen if self._length is None else self._length
        if size > MAX_DRAIN and len(self._body) >= self.keep:
            self._complete = True
            self._keep_alive = False
            self._finish()
            self.close()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        fut = self._answer
        if fut is not None and not fut.done():
            fut.set_result(Answer(self._status, bytes(self._body), self._retry_after))


def _malformed(exc: Exception) -> str:
    """What llhttp found wrong, in the relay's words (safe to record)."""
    text = str(exc).lower()
    if isinstance(exc, httptools.HttpParserInvalidStatusError) or "status" in text:
        return "http: malformed status line"
    if "expected http/" in text:
        return "http: not an HTTP/1.x answer"
    if "content-length" in text:
        return "http: invalid Content-Length"
    if "chunk" in text:
        return "http: malformed chunk"
    if "upgrade" in text or isinstance(exc, httptools.HttpParserUpgrade):
        return "http: unexpected protocol switch"
    if "header" in text:
        return "http: malformed header line"
    return f"http: malformed answer ({text[:80]})"
