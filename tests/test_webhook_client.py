"""The webhook HTTP client (relay/http/) against real servers on loopback.

Well-behaved receivers are aiohttp servers; the edge cases of HTTP/1.1 (answers without a
length, interim answers, chunk extensions, a keep-alive connection the server drops, broken
answers) come from small asyncio servers that write exactly the bytes under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from relay.http.ssrf import CallbackPolicy
from relay.http.webhook import MAX_DRAIN, Target, WebhookClient, WebhookError
from relay.metrics import CALLBACK_RESENDS
from relay.settings import CallbackAllow
from tests.conftest import eventually

LOCAL = CallbackPolicy(CallbackAllow(networks=(ipaddress.ip_network("127.0.0.1/32"),)))
HEADERS = [("webhook-id", "evt_1"), ("content-type", "application/json")]
BODY = b'{"type":"clips.ready"}'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client() -> AsyncIterator[WebhookClient]:
    c = WebhookClient(LOCAL, timeout=2.0)
    yield c
    await c.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start raw TCP servers on loopback; each connection runs *handler*. Returns the URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request: its head and Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """A connection handler that reads a request and writes the next answer, in turn."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer in answers:
                await read_request(reader)
                writer.write(answer)
                await writer.drain()
            if not then_close:
                await reader.read()  # until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def target(url: str) -> Target:
    return Target.of(URL(url))


# --- requests and keep-alive ------------------------------------------------------------


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    """An aiohttp receiver recording each request (and its body); answers 204."""
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        status = int(request.query.get("status", "204"))
        text = request.query.get("text", "")
        return web.Response(status=status, text=text or None, headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen, bodies
    await runner.cleanup()


async def test_post_sends_the_request_and_reuses_the_connection(
    client: WebhookClient, recorder: tuple[str, list[web.Request], list[bytes]]
) -> None:
    base, seen, bodies = recorder
    for _ in range(5):
        answer = await client.post(target(f"{base}/hooks/a?x=1&y=%20"), HEADERS, BODY)
        assert (answer.status, answer.body) == (204, b"")
    assert client.connections_made == 1 and client.idle_connections == 1
    assert bodies == [BODY] * 5
    first = seen[0]
    assert first.method == "POST" and first.path_qs == "/hooks/a?x=1&y=%20"
    assert first.headers["Host"] == base.removeprefix("http://")
    assert first.headers["User-Agent"] == "clip-relay/1"
    assert first.headers["webhook-id"] == "evt_1"
    assert first.headers["Content-Length"] == str(len(BODY))
    assert len({r.transport.get_extra_info("peername") for r in seen if r.transport}) == 1


async def test_status_retry_after_and_the_kept_start_of_the_body(
    recorder: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=2.0, keep=10)
    try:
        answer = await client.post(target(f"{base}/h?status=429&text=slow+down+please"), [], b"")
        assert answer.status == 429
        assert answer.retry_after == "7"
        assert answer.body == b"slow down "
        answer = await client.post(target(f"{base}/h?status=200"), [], b"")
        assert answer.status == 200
        assert client.connections_made == 1  # the rest of the body was read, not abandoned
    finally:
        await client.close()


async def test_concurrent_posts_use_their_own_connections_and_idle_ones_are_capped(
    recorder: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=2.0, max_idle=3)
    try:
        answers = await asyncio.gather(
            *(client.post(target(f"{base}/c"), HEADERS, BODY) for _ in range(8))
        )
        assert {a.status for a in answers} == {204}
        assert client.connections_made == 8
        assert client.idle_connections == 3
    finally:
        await client.close()
    assert client.idle_connections == 0


async def test_idle_connections_are_closed_after_idle_s(
    recorder: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=2.0, idle_s=0.2)
    try:
        await client.post(target(f"{base}/i"), HEADERS, BODY)
        await asyncio.sleep(0.3)
        await client.post(target(f"{base}/i"), HEADERS, BODY)
        assert client.connections_made == 2
    finally:
        await client.close()


async def test_a_connection_older_than_max_age_is_not_reused(
    recorder: tuple[str, list[web.Request], list[bytes]],
) -> None:
    """A keep-alive connection older than ``max_age_s`` (default: the DNS cache's longest,
    300 s) is closed when its answer is in, so the next request resolves the name again
    and follows an address that changed. Fails before: a receiver answering keep-alive
    kept every attempt on its first connection's address (a tester's run, 2026-12-07)."""
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=2.0, max_age_s=1.5)
    try:
        await client.post(target(f"{base}/a"), HEADERS, BODY)
        await client.post(target(f"{base}/a"), HEADERS, BODY)
        assert client.connections_made == 1  # young: reused
        await asyncio.sleep(1.55)
        await client.post(target(f"{base}/a"), HEADERS, BODY)  # on the old one, then closed
        assert client.idle_connections == 0
        await client.post(target(f"{base}/a"), HEADERS, BODY)
        assert client.connections_made == 2
    finally:
        await client.close()


async def test_connections_their_receivers_close_leave_the_pool_at_once(
    scripted: Callable[[Handler], Awaitable[str]],
    recorder: tuple[str, list[web.Request], list[bytes]],
) -> None:
    """A keep-alive connection its receiver closes while idle (Node's default: after 5 s)
    leaves the pool when it closes, so it does not keep a place a live one needs; and idle
    connections are closed after idle_s with no traffic at all. Fails before: closed ones
    held the pool's places until a sweep on a later request, and the healthy origin's
    connections were refused a place (a review, 2026-12-06)."""
    ok = b"HTTP/1.1 204 No Content\r\n\r\n"
    close_now = asyncio.Event()

    async def closes_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            writer.write(ok)
            await writer.drain()
            await close_now.wait()
        finally:
            writer.close()

    closers = [await scripted(closes_idle) for _ in range(4)]
    base, _, _ = recorder
    client = WebhookClient(LOCAL, timeout=2.0, max_idle=4, idle_s=1.0)
    try:
        for url in closers:
            assert (await client.post(target(url), HEADERS, BODY)).status == 204
        assert client.idle_connections == 4
        close_now.set()  # their receivers close them
        await eventually(lambda: client.idle_connections == 0, timeout=0.9, what="left")
        for _ in range(5):
            await client.post(target(f"{base}/kept"), HEADERS, BODY)
        assert client.connections_made == 5  # 4 closed ones, then 1 kept alive
        assert client.idle_connections == 1
        # no traffic: closed after idle_s all the same
        await eventually(lambda: client.idle_connections == 0, timeout=3.0, what="swept")
    finally:
        await client.close()


async def test_user_info_becomes_basic_authorization(
    client: WebhookClient, recorder: tuple[str, list[web.Request], list[bytes]]
) -> None:
    base, seen, _ = recorder
    url = base.replace("http://", "http://ops:p%40ss@") + "/u"
    await client.post(target(url), HEADERS, BODY)
    assert seen[0].headers["Authorization"] == "Basic " + base64.b64encode(b"ops:p@ss").decode()
    token_only = base.replace("http://", "http://:T0KEN@") + "/u"  # (a password alone)
    await client.post(target(token_only), HEADERS, BODY)
    assert seen[1].headers["Authorization"] == "Basic " + base64.b64encode(b":T0KEN").decode()


def test_target_request_line_and_host() -> None:
    t = target("https://hooks.example.com/a/b?q=a%20b")
    assert t.origin == ("https", "hooks.example.com", 443)
    assert t.server_hostname == "hooks.example.com"
    assert t.head.startswith(b"POST /a/b?q=a%20b HTTP/1.1\r\nHost: hooks.example.com\r\n")
    assert target("http://[::1]:8080").head.startswith(b"POST / HTTP/1.1\r\nHost: [::1]:8080\r\n")
    assert target("http://example.com:80/x").origin == ("http", "example.com", 80)
    assert b"Host: example.com\r\n" in target("http://example.com:80/x").head
    assert b"Host: xn--bcher-kva.example\r\n" in target("http://bücher.example/").head


# --- HTTP/1.1 answers ---------------------------------------------------------------------


async def test_body_until_close_and_no_reuse(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    url = await scripted(answering(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nhello", then_close=True))
    answer = await client.post(target(url), HEADERS, BODY)
    assert (answer.status, answer.body) == (200, b"hello")
    assert client.idle_connections == 0


async def test_connection_close_and_http_1_0_are_not_reused(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    for answer in (
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ):
        url = await scripted(answering(answer))
        assert (await client.post(target(url), HEADERS, BODY)).status in (200, 204)
        assert client.idle_connections == 0


async def test_interim_answers_are_skipped(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
    url = await scripted(answering(interim + b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"))
    assert (await client.post(target(url), HEADERS, BODY)).status == 202
    assert client.idle_connections == 1


async def test_chunked_answer_with_extensions_and_trailers(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    url = await scripted(answering(chunked, chunked))

    for _ in range(2):
        answer = await client.post(target(url), HEADERS, BODY)
        assert answer.body == b"hello 0123456789"
    assert client.connections_made == 1


async def test_answer_split_into_single_bytes(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await reader.read()
        writer.close()

    url = await scripted(handle)
    reply = await client.post(target(url), HEADERS, BODY)
    assert (reply.status, reply.body) == (200, b"abc")
    assert client.idle_connections == 1


async def test_large_body_is_not_drained(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 4096)
        await writer.drain()
        await reader.read()  # and never the rest
        writer.close()

    url = await scripted(handle)
    answer = await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 1.0)
    assert answer.status == 200 and answer.body == b"x" * 1024
    assert client.idle_connections == 0
    assert MAX_DRAIN < 100_000_000


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 2x4 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 2044\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", "malformed chunk"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "protocol switch"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, "headers too large"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed before a full answer"),
    ],
)
async def test_broken_answers_fail_the_attempt(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]], answer: bytes, words: str
) -> None:
    url = await scripted(answering(answer, then_close=True))
    with pytest.raises(WebhookError, match=words) as caught:
        await client.post(target(url), HEADERS, BODY)
    assert str(caught.value).startswith("http: ")
    assert client.idle_connections == 0


@pytest.mark.parametrize(
    "opening",
    [
        b"0\r\nX-T: ",  # the last chunk, then a trailer line without end
        b"1;ext=",  # a chunk extension without end
        b"3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: ",  # some body, then a trailer without end
    ],
)
async def test_endless_trailers_fail_the_attempt_before_they_fill_memory(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]], opening: bytes
) -> None:
    """A chunked answer whose trailer (or chunk extension) never ends: once the bytes after
    the head that bring no body pass MAX_HEAD, the attempt fails and the connection closes.
    Fails before: the parser's caller buffered the line for the whole timeout (a security
    review: 250 MB for one attempt in 10 s)."""
    sent = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + opening)
        with contextlib.suppress(ConnectionError):
            while sent < 10_000_000:
                writer.write(b"a" * 16384)
                sent += 16384
                await writer.drain()
        writer.close()

    url = await scripted(handle)
    with pytest.raises(WebhookError, match="trailers too large"):
        await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 5.0)
    assert client.idle_connections == 0  # (the error, not the timeout: it stopped reading)


async def test_stale_keep_alive_connection_is_sent_once_more(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            requests.append(await read_request(reader))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
            requests.append(await read_request(reader))  # read, then dropped unanswered
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    url = await scripted(handle)
    resent = CALLBACK_RESENDS._value.get()
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert CALLBACK_RESENDS._value.get() == resent
    assert (await client.post(target(url), HEADERS, BODY)).status == 204
    assert client.connections_made == 2
    assert len(requests) == 3  # the dropped one was sent again on the new connection
    # counted: a receiver that reads and closes unanswered has it twice (a tester's find)
    assert CALLBACK_RESENDS._value.get() == resent + 1


async def test_fresh_connection_closed_without_answer_is_not_retried(
    client: WebhookClient, scripted: Callable[[Handler], Awaitable[str]]
) -> None:
    calls = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await read_request(reader)
        writer.close()

    url = await scripted(handle)
    with pytest.raises(WebhookError, match="closed before a full answer"):
        await client.post(target(url), HEADERS, BODY)
    assert calls == 1


async def test_timeout_closes_the_connection(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns once the client has closed
        closed.set()
        writer.close()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.post(target(url), HEADERS, BODY)
        assert 0.3 <= loop.time() - started < 1.0  # (0.3 s, and a loaded loop's lateness)
        await asyncio.wait_for(closed.wait(), 2.0)
        assert client.idle_connections == 0
    finally:
        await client.close()


async def test_timeout_counts_the_tls_handshake(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers the handshake
        writer.close()

    url = (await scripted(handle)).replace("http://", "https://")
    client = WebhookClient(LOCAL, timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.post(target(url), HEADERS, BODY), 2.0)
    finally:
        await client.close()


async def test_close_fails_a_waiting_request(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()
        writer.close()

    url = await scripted(handle)
    client = WebhookClient(LOCAL, timeout=5.0)
    waiting = asyncio.create_task(client.post(target(url), HEADERS, BODY))
    await asyncio.sleep(0.1)
    await client.close()
    with pytest.raises(WebhookError, match="client closed"):
        await asyncio.wait_for(waiting, 1.0)


# --- connecting ---------------------------------------------------------------------------


async def test_refused_connection(client: WebhookClient) -> None:
    server = await asyncio.start_server(answering(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(WebhookError, match=r"^connect: ") as caught:
        await client.post(target(f"http://127.0.0.1:{port}/"), HEADERS, BODY)
    assert str(caught.value) == "connect: Connection refused"


async def test_refused_address_is_never_connected_to(
    scripted: Callable[[Handler], Awaitable[str]],
) -> None:
    connected = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connected
        connected += 1
        writer.close()

    url = await scripted(handle)
    strict = WebhookClient(CallbackPolicy(CallbackAllow()), timeout=2.0)
    for host in ("127.0.0.1", "localhost", "127.1"):
        with pytest.raises(WebhookError, match=r"^refused: callback "):
            await strict.post(target(url.replace("127.0.0.1", host)), HEADERS, BODY)
    await asyncio.sleep(0.05)
    assert connected == 0


async def test_unresolvable_host(client: WebhookClient) -> None:
    with pytest.raises(WebhookError, match=r"^dns: host not resolved \(domain name not found\)$"):
        await client.post(target("http://no-such-host.invalid/"), HEADERS, BODY)


# --- TLS ----------------------------------------------------------------------------------


def self_signed(
    tmp: Path, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[Path, Path]:
    """A self-signed certificate for host *names* and addresses *ips*, and its key, as PEM
    files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{names[0]}.pem", tmp / f"{names[0]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def tls_server(cert: Path, key: Path) -> tuple[web.AppRunner, int]:
    """A loopback HTTPS server with *cert* answering 204 to ``POST /tls``, and its port."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hook(_: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/tls", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    return runner, runner.addresses[0][1]


async def test_tls_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    runner, port = await tls_server(cert, key)
    untrusting = WebhookClient(LOCAL, timeout=2.0)
    trusting = WebhookClient(
        LOCAL, timeout=2.0, ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    try:
        with pytest.raises(WebhookError, match=r"^tls: certificate rejected$"):
            await untrusting.post(target(f"https://localhost:{port}/tls"), HEADERS, BODY)
        for host in ("localhost", "127.0.0.1"):
            answer = await trusting.post(target(f"https://{host}:{port}/tls"), HEADERS, BODY)
            assert answer.status == 204
        await trusting.post(target(f"https://localhost:{port}/tls"), HEADERS, BODY)
        assert trusting.connections_made == 2  # one per origin, then reused
    finally:
        await untrusting.close()
        await trusting.close()
        await runner.cleanup()
