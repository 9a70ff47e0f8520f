"""Two bad webhook receivers for the noisy-neighbour scenario, in one process of their own.

``python bench/bad_origins.py --slow-port P --hole-port Q [--delay 10]``:

- the *slow* origin (port P) reads each request and answers ``204`` after ``--delay``
  seconds (keep-alive);
- the *black hole* (port Q) accepts connections and reads, and never answers;
- ``GET /_stats`` on the slow port answers at once with what each has seen:
  ``{"slow": {"connections", "requests"}, "hole": {...}}``.

Plain asyncio streams, so that nothing but the relay's requests is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable


class Counts:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "requests": self.requests}


SLOW, HOLE = Counts(), Counts()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return head


def _slow(delay: float) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await _read_request(reader)
            if head.startswith(b"GET /_stats"):
                body = json.dumps({"slow": SLOW.as_dict(), "hole": HOLE.as_dict()}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                writer.close()
                return
            SLOW.connections += 1
            while True:
                SLOW.requests += 1
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await _read_request(reader)
        writer.close()

    return handle


async def _hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    HOLE.connections += 1
    with contextlib.suppress(Exception):
        await _read_request(reader)
        HOLE.requests += 1
        await reader.read()  # until the client gives up
    writer.close()


async def _main(args: argparse.Namespace) -> None:
    slow = await asyncio.start_server(_slow(args.delay), "127.0.0.1", args.slow_port, backlog=4096)
    hole = await asyncio.start_server(_hole, "127.0.0.1", args.hole_port, backlog=4096)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with slow, hole:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow-port", type=int, required=True)
    parser.add_argument("--hole-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=10.0)
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
