"""The bytes of a delivery on the wire: the request's head, and the answer read as it arrives.

A delivery is always the same request -- ``POST``, a few fixed headers, a body of bytes -- so
:class:`Target` prepares its first lines once per callback URL. The answer is parsed by
:class:`AnswerReader` as its bytes come in: the status line, the headers the outcome needs
(``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Retry-After``), then a
``Content-Length``, chunked or read-until-close body. Interim 1xx answers are skipped; the first
``keep`` bytes of the body are kept, and a body larger than ``MAX_DRAIN`` is not read to its end
(the connection is closed instead); a head over ``MAX_HEAD`` bytes fails the attempt.

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

from yarl import URL

USER_AGENT = "clip-relay/1"
MAX_HEAD = 64 * 1024  # bytes of status line and headers an answer may have
MAX_DRAIN = 64 * 1024  # bodies up to this size are read to their end to keep the connection
MAX_LINE = 4096  # a chunk-size or trailer line
_CHUNK_SIZE, _CHUNK_END, _TRAILERS = -1, -2, -3  # where a chunked body's parser stands

Origin = tuple[str, str, int]  # scheme, host, port


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


class AnswerReader:
    """The answer to the one request in flight on a connection, parsed as its bytes arrive.

    The connection subclass appends what the socket gives to ``_buf``, calls :meth:`_parse`
    and provides :meth:`close`; the answer resolves the ``_answer`` future.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
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

    def close(self) -> None:
        """Close the connection at once (the connection subclass does it)."""
        raise NotImplementedError

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
