"""The HTTP/1.1 client that delivers webhooks: keep-alive pool, SSRF-checked addresses, TLS.

A delivery is always the same request -- ``POST``, a few fixed headers, a body of bytes -- and
its outcome needs only the status, the ``Retry-After`` header and the start of the answer.
aiohttp's general client spends about 80 us of CPU per such request (tracing, cookies,
redirects, multidict headers, stream readers); this one spends about 30, and at fan-out that
difference is most of what a webhook costs the worker (README "Performance").

What it does:

- one request at a time per connection, kept alive and reused per origin (scheme, host,
  port); idle connections are closed after ``idle_s`` and at most ``max_idle`` are kept;
- the host is resolved (cached ``dns_ttl`` seconds) and only addresses the
  :class:`~relay.http.ssrf.CallbackPolicy` allows are connected to -- the address checked is the
  address used, so DNS rebinding gains nothing;
- ``https`` with the system's trust store (or a given context), hostname checked;
- a request sent on a reused connection that the server had closed meanwhile (no byte of an
  answer came back) is sent once more on a new connection: the usual keep-alive race, and
  delivery is at-least-once anyway (receivers dedupe on ``webhook-id``);
- answers: ``Content-Length``, chunked or read-until-close bodies; interim 1xx answers are
  skipped; the first ``keep`` bytes of the body are kept, a body larger than ``MAX_DRAIN``
  is not read to its end (the connection is closed instead);
- redirects are not followed (SPEC: a 3xx is a failed attempt); no cookies, no proxies.

Failures raise :class:`WebhookError` whose message is the attempt's recorded ``error``
(``connect: ...``, ``dns: ...``, ``tls: ...``, ``http: ...``, ``refused: ...``), or
:class:`TimeoutError` when ``timeout`` seconds pass first -- connecting, sending and the
answer all count. Waiting requests are timed by one watchdog that ticks every
``WATCHDOG_TICK_S`` at most, instead of a timer per request (that timer cost as much as
parsing the answer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

from relay.constants import RESPONSE_BODY_KEPT
from relay.http.ssrf import CallbackPolicy, CallbackRefused, SockAddr
from relay.metrics import CALLBACK_CONNECTIONS

USER_AGENT = "clip-relay/1"
MAX_HEAD = 64 * 1024  # bytes of status line and headers an answer may have
MAX_DRAIN = 64 * 1024  # bodies up to this size are read to their end to keep the connection
DNS_TTL_S = 10.0
IDLE_S = 15.0  # an idle keep-alive connection is closed after this long
DNS_CACHE_MAX = 10_000
WATCHDOG_TICK_S = 0.1  # how late, at most, a request's timeout is noticed
MAX_LINE = 4096  # a chunk-size or trailer line
_CHUNK_SIZE, _CHUNK_END, _TRAILERS = -1, -2, -3  # where a chunked body's parser stands

Origin = tuple[str, str, int]  # scheme, host, port
Address = tuple[int, SockAddr]  # family, socket address


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
        scheme = url.scheme
        host = url.raw_host or ""
        port = url.port or (443 if scheme == "https" else 80)
        host_header = f"[{host}]" if ":" in host else host
        if not url.is_default_port():
            host_header = f"{host_header}:{port}"
        path = url.raw_path_qs or "/"
        if any(ch <= " " or ch == "\x7f" for ch in path + host_header):
            raise ValueError("callback URL has characters a request line cannot carry")
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}"]
        lines.append(f"User-Agent: {USER_AGENT}")
        if url.raw_user is not None:
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


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses the answer to the one request in flight."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.deadline = 0.0  # loop time by which the answer must be in
        self._buf = bytearray()
        self._body = bytearray()
        self._answer: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        """Ready to read the answer to a new request."""
        self._got_bytes = False
        self._head_done = False
        self._status = 0
        self._retry_after: str | None = None
        self._keep_alive = True
        self._length: int | None = None  # body bytes left; None: chunked or until close
        self._chunked = False
        self._chunk_left = _CHUNK_SIZE  # > 0: data bytes left in the current chunk
        self._body.clear()
        self._seen = 0  # body bytes received

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        fut = self._answer
        if fut is None or fut.done():
            return
        if self._head_done and self._length is None and not self._chunked:
            self._finish()  # a body that runs until the connection closes
        elif self._got_bytes or not self.reused:
            fut.set_exception(WebhookError("http: connection closed before a full answer"))
        else:
            fut.set_exception(_Stale())

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # nothing was asked: the connection is out of step
            return
        self._got_bytes = True
        self._buf += data
        try:
            self._parse()
        except WebhookError as exc:
            self._keep_alive = False
            if not self._answer.done():
                self._answer.set_exception(exc)
            self.close()

    # --- use --------------------------------------------------------------------------------

    def send(self, payload: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future resolves with its answer."""
        assert self.transport is not None
        self._reset()
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._answer

    @property
    def reusable(self) -> bool:
        """The last answer was read completely and the connection may carry another."""
        return not self.closed and self._keep_alive and not self._buf

    def abort(self, exc: Exception) -> None:
        """Fail the request in flight with *exc* and close."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        """Close the connection at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- parsing ----------------------------------------------------------------------------

    def _parse(self) -> None:
        while not self._head_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise WebhookError("http: answer headers too large")
                return
            if end > MAX_HEAD:
                raise WebhookError("http: answer headers too large")
            head = bytes(self._buf[:end])
            del self._buf[: end + 4]
            self._read_head(head)
        if self._chunked:
            self._read_chunks()
        else:
            self._read_body()

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) or len(status_line) < 12:
            raise WebhookError("http: not an HTTP/1.x answer")
        code = status_line[9:12]
        if not code.isdigit() or (len(status_line) > 12 and status_line[12:13] != b" "):
            raise WebhookError("http: malformed status line")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise WebhookError("http: unexpected protocol switch")
            return  # an interim answer: the final one follows
        length: int | None = None
        keep_alive = status_line.startswith(b"HTTP/1.1")
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise WebhookError("http: malformed header line")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise WebhookError("http: invalid Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    keep_alive = False
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif name == b"retry-after":
                self._retry_after = value.decode("latin-1")
        self._status = status
        self._head_done = True
        self._keep_alive = keep_alive
        if status in (204, 304):
            self._length = 0
        elif chunked:
            self._chunked = True
        elif length is not None:
            self._length = length
        else:
            self._length = None
            self._keep_alive = False  # the body runs until the connection closes

    def _take(self, data: bytes | bytearray) -> None:
        room = self.keep - len(self._body)
        if room > 0:
            self._body += data[:room]
        self._seen += len(data)

    def _read_body(self) -> None:
        if self._length is None:  # until close: stop once enough is kept
            self._take(self._buf)
            self._buf.clear()
            self._overflow(self._seen)
            return
        n = min(self._length, len(self._buf))
        self._take(self._buf[:n])
        del self._buf[:n]
        self._length -= n
        if self._length == 0:
            self._finish()
        else:
            self._overflow(self._seen + self._length)  # judged by its declared size

    def _overflow(self, size: int) -> bool:
        """A body of *size* bytes is too large to drain: once enough of it is kept, answer
        and close the connection."""
        if size <= MAX_DRAIN or len(self._body) < self.keep:
            return False
        self._keep_alive = False
        self._finish()
        self.close()
        return True

    def _read_chunks(self) -> None:
        buf = self._buf
        while True:
            left = self._chunk_left
            if left > 0:  # inside a chunk's data
                n = min(left, len(buf))
                if n == 0:
                    return
                self._take(buf[:n])
                del buf[:n]
                self._chunk_left = left - n
                if self._overflow(self._seen) or self._chunk_left:
                    return
                self._chunk_left = _CHUNK_END
            elif left == _CHUNK_END:  # the CRLF after a chunk's data
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise WebhookError("http: malformed chunk")
                del buf[:2]
                self._chunk_left = _CHUNK_SIZE
            else:  # a chunk-size line, or a trailer line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        raise WebhookError("http: malformed chunk")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if left == _TRAILERS:
                    if not line:
                        self._finish()
                        return
                    continue
                size = line.split(b";", 1)[0].strip()
                if not size or size.strip(b"0123456789abcdefABCDEF") or len(size) > 15:
                    raise WebhookError("http: malformed chunk")
                self._chunk_left = int(size, 16) or _TRAILERS

    def _finish(self) -> None:
        fut = self._answer
        if fut is not None and not fut.done():
            fut.set_result(Answer(self._status, bytes(self._body), self._retry_after))


class _Stale(Exception):
    """A reused connection turned out closed before anything came back."""


class WebhookClient:
    """Sends webhook requests; one per worker process, shared by all delivery lanes."""

    def __init__(
        self,
        policy: CallbackPolicy,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        keep: int = RESPONSE_BODY_KEPT,
        max_idle: int = 256,
        idle_s: float = IDLE_S,
        dns_ttl: float = DNS_TTL_S,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.keep = keep
        self.max_idle = max_idle
        self.idle_s = idle_s
        self.dns_ttl = dns_ttl
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._dns: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._swept = time.monotonic()
        self.connections_made = 0  # for tests and metrics: new TCP connections
        self._in_flight: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._tick = min(WATCHDOG_TICK_S, max(timeout / 20, 0.005))

    async def post(self, target: Target, headers: Iterable[tuple[str, str]], body: bytes) -> Answer:
        """POST *body* to *target* with *headers* (names and values from the relay itself,
        never from a request); the answer, or :class:`WebhookError` / :class:`TimeoutError`."""
        lines = [target.head]
        lines.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
        lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
        lines.append(body)
        payload = b"".join(lines)
        deadline = asyncio.get_running_loop().time() + self.timeout
        conn = self._take_idle(target.origin) or await self._connect_by(target, deadline)
        try:
            try:
                answer = await self._exchange(conn, payload, deadline)
            except _Stale:  # closed by the server while idle: once more, on a new one
                conn = await self._connect_by(target, deadline)
                answer = await self._exchange(conn, payload, deadline)
        except BaseException:  # timed out, cancelled or failed: never reused
            conn.close()
            raise
        self._release(target.origin, conn)
        return answer

    async def _exchange(self, conn: _Connection, payload: bytes, deadline: float) -> Answer:
        """Send one request on *conn* and wait for its answer, until *deadline* at most (the
        watchdog fails it then: one shared timer instead of one per request)."""
        answer = conn.send(payload)
        conn.deadline = deadline
        self._in_flight.add(conn)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="webhook-client-watchdog")
        try:
            return await answer
        finally:
            self._in_flight.discard(conn)

    async def _watch(self) -> None:
        """Fail the requests whose deadline has passed, every tick."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._tick)
            now = loop.time()
            for conn in [c for c in self._in_flight if c.deadline <= now]:
                conn.abort(TimeoutError())

    @property
    def idle_connections(self) -> int:
        """Keep-alive connections waiting in the pool."""
        return self._idle_count

    async def close(self) -> None:
        """Close every connection (a request still waiting fails); stop the watchdog."""
        for conn in list(self._in_flight):
            conn.abort(WebhookError("http: client closed"))
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._idle_count = 0

    # --- the pool -----------------------------------------------------------------------------

    def _take_idle(self, origin: Origin) -> _Connection | None:
        """A live idle connection to *origin*, if there is one."""
        now = time.monotonic()
        if now - self._swept > self.idle_s:
            self._sweep(now)
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < self.idle_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _release(self, origin: Origin, conn: _Connection) -> None:
        if not conn.reusable or self._idle_count >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(origin, []).append(conn)
        self._idle_count += 1

    def _sweep(self, now: float) -> None:
        self._swept = now
        for origin in list(self._idle):
            conns = self._idle[origin]
            live: list[_Connection] = []
            for conn in conns:
                if not conn.closed and now - conn.idle_since < self.idle_s:
                    live.append(conn)
                else:
                    conn.close()
            self._idle_count -= len(conns) - len(live)
            if live:
                self._idle[origin] = live
            else:
                del self._idle[origin]

    # --- connecting -----------------------------------------------------------------------

    async def _connect_by(self, target: Target, deadline: float) -> _Connection:
        async with asyncio.timeout_at(deadline):
            return await self._connect(target)

    async def _connect(self, target: Target) -> _Connection:
        scheme, host, port = target.origin
        addresses = await self._resolve(host, port)
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl or _default_context()
        last: OSError | None = None
        for family, sockaddr in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.keep),
                    sockaddr[0],
                    sockaddr[1],
                    family=family,
                    ssl=context,
                    server_hostname=target.server_hostname if context else None,
                )
            except ssl.SSLCertVerificationError:
                raise WebhookError("tls: certificate rejected") from None
            except ssl.SSLError as exc:
                raise WebhookError(f"tls: {exc.reason or exc}"[:200]) from None
            except OSError as exc:
                last = exc
                continue
            self.connections_made += 1
            CALLBACK_CONNECTIONS.inc()
            return conn
        assert last is not None
        reason = os.strerror(last.errno) if last.errno else str(last)
        raise WebhookError(f"connect: {reason}"[:200])

    async def _resolve(self, host: str, port: int) -> list[Address]:
        key = (host, port)
        now = time.monotonic()
        hit = self._dns.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            addresses = await self.policy.resolve(host, port)
        except CallbackRefused as exc:
            raise WebhookError(f"refused: callback {exc}") from None
        except (OSError, UnicodeError):
            raise WebhookError("dns: host not resolved") from None
        if len(self._dns) >= DNS_CACHE_MAX:
            self._dns.clear()
        self._dns[key] = (now + self.dns_ttl, addresses)
        return addresses


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's trust store, loaded once per process (on the first https callback)."""
    return ssl.create_default_context()
