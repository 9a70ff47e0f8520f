"""Edges of the webhook HTTP client (relay/http/) a mutation review found untested: TLS's
host name, a reused connection cut mid-answer, bytes beyond the answer, the MAX_HEAD and
MAX_DRAIN boundaries, an interim answer's headers, connecting past an address that fails,
and what a timed-out, cancelled or retried post leaves behind. Real servers on loopback,
as in tests/test_webhook_client.py (whose fixtures and helpers these reuse)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from relay.http.dns import Resolver
from relay.http.ssrf import CallbackPolicy
from relay.http.webhook import MAX_HEAD, WebhookClient, WebhookError
from relay.settings import CallbackAllow
from tests.conftest import eventually
from tests.dns_server import DnsServer, Name
from tests.test_webhook_client import (
    BODY,
    HEADERS,
    LOCAL,
    Handler,
    answering,
    client,
    read_request,
    recorder,
    scripted,
    self_signed,
    target,
    tls_server,
)

__all__ = ["client", "recorder", "scripted"]  # (fixtures of test_webhook_client, used here)

Scripted = Callable[[Handler], Awaitable[str]]
Recorder = tuple[str, list[web.Request], list[bytes]]
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
DRAINED = 64 * 1024  # docs/security.md: "a body past 64 KB is not drained"


# --- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("named", "ok"), [("localhost", True), ("other.example", False)])
async def test_tls_checks_the_certificate_against_the_host_name(
    tmp_path: Path, named: str, ok: bool
) -> None:
    """The certificate is checked against the callback's host name (sent as SNI), not the
    address connected to: one naming only ``localhost`` is accepted for
    ``https://localhost:PORT``, one naming another host is rejected. Fails if the host
    name is not passed to TLS (then 127.0.0.1 is checked, which the certificate does not
    name). (a mutation review, 2026-12-06)"""
    cert, key = self_signed(tmp_path, names=(named,), ips=())
    runner, port = await tls_server(cert, key)
    trusting = WebhookClient(
        LOCAL, timeout=2.0, ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    try:
        url = f"https://localhost:{port}/tls"
        if ok:
            assert (await trusting.post(target(url), HEADERS, BODY)).status == 204
        else:
            with pytest.raises(WebhookError, match=r"^tls: "):
                await trusting.post(target(url), HEADERS, BODY)
    finally:
        await trusting.close()
        await runner.cleanup()


# --- reused connections -----------------------------------------------------------------


async def test_a_reused_connection_cut_mid_answer_is_not_sent_again(
    client: WebhookClient, scripted: Scripted
) -> None:
    """A reused connection that brought part of an answer and then closed failed that
    attempt: the receiver had the request (it answered), so it is not sent once more as
    after a stale keep-alive connection. (a mutation review, 2026-12-06)"""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await read_request(reader))
            writer.write(NO_CONTENT)
            await writer.drain()
            requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    url = await scripted(handle)
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    with pytest.raises(WebhookError, match=r"^http: connection closed before a full answer$"):
        await client.post(target(url), HEADERS, BODY)
    await asyncio.sleep(0.05)
    assert len(requests) == 2 and client.connections_made == 1


class OutOfStep:
    """A receiver that answers each request 204 and, on its first connection, writes *extra*
    bytes nothing asked for (in the answer's own write, or *delay* s after it), then holds
    that connection until the client closes it."""

    def __init__(self, extra: bytes, *, delay: float = 0.0) -> None:
        self.extra, self.delay = extra, delay
        self.connections = self.ended = 0
        self.extra_sent = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        try:
            await read_request(reader)
            writer.write(NO_CONTENT + (self.extra if first and not self.delay else b""))
            await writer.drain()
            if first:
                if self.delay:
                    await asyncio.sleep(self.delay)
                    writer.write(self.extra)
                    await writer.drain()
                self.extra_sent.set()
                await reader.read()  # until the client closes
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.ended += 1


async def test_bytes_after_the_answer_keep_the_connection_out_of_the_pool(
    client: WebhookClient, scripted: Scripted
) -> None:
    """An answer followed, in the same write, by the start of another answer nothing asked
    for: the connection is out of step and is closed, not kept for the next request (which
    would read that stray answer as its own). (a mutation review, 2026-12-06)"""
    receiver = OutOfStep(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    url = await scripted(receiver.handle)
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert client.idle_connections == 0
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert client.connections_made == 2 and receiver.connections == 2
    await eventually(lambda: receiver.ended == 2, timeout=1.0, what="both connections closed")


async def test_bytes_on_an_idle_connection_close_it(
    client: WebhookClient, scripted: Scripted
) -> None:
    """Bytes a receiver writes on an idle keep-alive connection (nothing was asked) put it
    out of step: it is closed and leaves the pool, and the next post makes a new one.
    (a mutation review, 2026-12-06)"""
    receiver = OutOfStep(b"HTTP/1.1 200 OK\r\n\r\n", delay=0.05)
    url = await scripted(receiver.handle)
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert client.idle_connections == 1
    await asyncio.wait_for(receiver.extra_sent.wait(), 2.0)
    await eventually(lambda: client.idle_connections == 0, timeout=1.5, what="closed")
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert client.connections_made == 2
    await eventually(lambda: receiver.ended == 2, timeout=1.0, what="both connections closed")


# --- answers ------------------------------------------------------------------------------


async def test_a_chunked_answer_cut_by_a_close_fails_the_attempt(
    client: WebhookClient, scripted: Scripted
) -> None:
    """A chunked body ends with its last chunk, not with the connection: one cut by a close
    is no answer. (a mutation review, 2026-12-06)"""
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc"
    url = await scripted(answering(cut, then_close=True))
    with pytest.raises(WebhookError, match=r"^http: connection closed before a full answer$"):
        await client.post(target(url), HEADERS, BODY)


async def test_an_interim_answers_headers_are_not_the_final_ones(
    client: WebhookClient, scripted: Scripted
) -> None:
    """A ``103 Early Hints`` carrying ``Retry-After`` (and a length) before the final answer:
    only the final answer's headers count. (a mutation review, 2026-12-06)"""
    interim = b"HTTP/1.1 103 Early Hints\r\nRetry-After: 99\r\nContent-Length: 5\r\n\r\n"
    final = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    url = await scripted(answering(interim + final))
    answer = await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 1.5)
    assert (answer.status, answer.retry_after, answer.body) == (503, None, b"")


@pytest.mark.parametrize(("size", "words"), [(MAX_HEAD, "closed before"), (MAX_HEAD + 1, "large")])
async def test_max_head_bytes_are_allowed_one_more_is_too_many(
    client: WebhookClient, scripted: Scripted, size: int, words: str
) -> None:
    """A head cut after exactly MAX_HEAD bytes is within the limit (it fails as cut short);
    MAX_HEAD + 1 bytes of head without its end are too large. (a mutation review,
    2026-12-06)"""
    opening = b"HTTP/1.1 200 OK\r\nX-Big: "
    head = opening + b"a" * (size - len(opening))
    assert len(head) == size
    url = await scripted(answering(head, then_close=True))
    with pytest.raises(WebhookError, match=words):
        await client.post(target(url), HEADERS, BODY)


async def test_a_body_over_max_drain_is_answered_without_its_rest(
    client: WebhookClient, scripted: Scripted
) -> None:
    """A body declared one byte over the 64 KB drained (MAX_DRAIN, as documented) is not
    waited for: once the kept bytes are in, the answer is given (and the connection
    closed), though the rest never comes. (a mutation review, 2026-12-06)"""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (DRAINED + 1))
        writer.write(b"x" * client.keep)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # and never the rest
        writer.close()

    url = await scripted(handle)
    answer = await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 1.0)
    assert answer.status == 200 and answer.body == b"x" * client.keep
    assert client.idle_connections == 0


async def test_a_body_of_max_drain_is_read_and_the_connection_kept(
    client: WebhookClient, scripted: Scripted
) -> None:
    """A body of exactly 64 KB (MAX_DRAIN) is read to its end, and the connection carries the
    next request. (a mutation review, 2026-12-06)"""
    full = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DRAINED + b"y" * DRAINED
    url = await scripted(answering(full, full))
    for _ in range(2):
        answer = await client.post(target(url), HEADERS, BODY)
        assert answer.status == 200 and answer.body == b"y" * client.keep
    assert client.connections_made == 1 and client.idle_connections == 1


async def test_a_large_body_in_small_pieces_keeps_keep_bytes(scripted: Scripted) -> None:
    """A body too large to drain that comes in pieces smaller than ``keep``: the answer waits
    until ``keep`` bytes are in, not only the first piece. (a mutation review, 2026-12-06)"""

    ended = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(40):
                writer.write(bytes([ord("a") + i % 26]) * 100)
                await writer.drain()
                await asyncio.sleep(0.01)
            await reader.read()
        writer.close()
        ended.set()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=2.0, keep=300)
    try:
        answer = await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 1.5)
        assert answer.body == b"a" * 100 + b"b" * 100 + b"c" * 100
        assert client.idle_connections == 0
        await asyncio.wait_for(ended.wait(), 1.0)  # (the client closed it: no more is sent)
    finally:
        await client.close()


# --- connecting ---------------------------------------------------------------------------


async def test_an_address_that_refuses_is_passed_over_for_the_next(scripted: Scripted) -> None:
    """A name resolving to ::1 and 127.0.0.1, with the receiver on 127.0.0.1 only: the
    connection refused on ::1 is passed over and the request delivered on 127.0.0.1.
    (a mutation review, 2026-12-06)"""
    dns = await DnsServer({"both.test": Name(ips=("127.0.0.1", "::1"))}).start()
    resolver = Resolver([dns.address])
    both = CallbackAllow(
        networks=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    )
    client = WebhookClient(CallbackPolicy(both, resolver), timeout=2.0)
    try:
        url = (await scripted(answering(NO_CONTENT))).replace("127.0.0.1", "both.test")
        # (the premise: ::1, where nothing listens, is tried first)
        assert (await resolver.resolve("both.test"))[0] == (socket.AF_INET6, "::1")
        assert (await client.post(target(url), HEADERS, BODY)).status == 204
        assert client.connections_made == 1
    finally:
        await client.close()
        dns.close()


# --- what a post leaves behind --------------------------------------------------------------


async def test_an_answered_post_is_not_timed_out_afterwards(recorder: Recorder) -> None:
    """Once answered, a request no longer waits: its connection, idle in the pool past the
    request's deadline, is not failed by the watchdog, and carries the next request.
    (a mutation review, 2026-12-06)"""
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=0.3)
    try:
        await client.post(target(f"{base}/t"), HEADERS, BODY)
        await asyncio.sleep(0.6)
        assert client.idle_connections == 1
        await client.post(target(f"{base}/t"), HEADERS, BODY)
        assert client.connections_made == 1
        assert not client._in_flight
    finally:
        await client.close()


async def test_a_cancelled_post_closes_its_connection(scripted: Scripted) -> None:
    """A post its caller cancels (a lane shutting down) while the receiver has not answered
    closes its connection: the receiver sees it end at once, not at the client's timeout.
    (a mutation review, 2026-12-06)"""
    asked = asyncio.Event()
    ended = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        asked.set()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # never answers; returns once the client has closed
        ended.set()
        writer.close()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=10.0)
    try:
        posting = asyncio.create_task(client.post(target(url), HEADERS, BODY))
        await asyncio.wait_for(asked.wait(), 2.0)
        posting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await posting
        await asyncio.wait_for(ended.wait(), 1.0)
        assert client.idle_connections == 0
    finally:
        await client.close()


async def test_a_request_sent_again_keeps_its_first_deadline(scripted: Scripted) -> None:
    """A request sent once more after a stale keep-alive connection has what is left of its
    timeout, not a new one: the timeout bounds the whole post. Here the stale connection
    closes 0.7 s into a 1 s timeout and the new one never answers: the post fails at
    1 s, not at 1.7. (a mutation review, 2026-12-06)"""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            if connections == 1:
                await read_request(reader)
                writer.write(NO_CONTENT)
                await writer.drain()
                await read_request(reader)
                await asyncio.sleep(0.7)  # then closes, unanswered: stale
            else:
                await read_request(reader)
                await reader.read()  # never answers
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=1.0)
    loop = asyncio.get_running_loop()
    try:
        assert (await client.post(target(url), HEADERS, BODY)).status == 204
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(target(url), HEADERS, BODY)
        took = loop.time() - started
        assert connections == 2  # (it was sent again)
        assert took < 1.4, took  # (1 s, and a loaded loop's lateness)
    finally:
        await client.close()


# --- a 2xx whose body does not come ---------------------------------------------------------


@pytest.mark.parametrize(("status", "success"), [(200, True), (500, False)])
async def test_a_2xx_head_within_the_timeout_is_the_answer_though_its_body_stalls(
    scripted: Scripted, status: int, success: bool
) -> None:
    """ "Any 2xx within the timeout is success" (SPEC): a receiver that sent its 200 head and
    part of a body, then stalls, answered -- recorded as a 200 with the body so far, the
    connection closed; before, the attempt was a timeout and the event was sent again (a
    tester's find). A 500 that stalls is still a timeout."""
    released = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 100\r\n\r\nab" % status)
            await writer.drain()
            await reader.read()  # stalls until the client closes
        released.set()
        writer.close()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=0.5)
    try:
        if success:
            answer = await client.post(target(url), HEADERS, BODY)
            assert (answer.status, answer.body) == (200, b"ab")
        else:
            with pytest.raises(TimeoutError):
                await client.post(target(url), HEADERS, BODY)
        await asyncio.wait_for(released.wait(), 2.0)  # closed, not kept for another request
        assert client.idle_connections == 0
    finally:
        await client.close()
