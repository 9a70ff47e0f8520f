"""CPU per answer of the webhook client's answer parser: ``python bench/parser_cost.py``.

Feeds typical receiver answers (a bare 204; a 200 with headers and a short JSON body; a
chunked 200) to :class:`relay.http.wire.AnswerReader`, 100,000 times each, five rounds, and
prints the median microseconds per answer. ``--wire PATH`` measures another version of
``relay/http/wire.py`` instead (e.g. ``git show REV:relay/http/wire.py > /tmp/wire_old.py``),
so a before/after is two runs of this command.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

ANSWERS = {
    "204": b"HTTP/1.1 204 No Content\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n",
    "200 + JSON": b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: 11\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\n"
    b'Server: Python/3.11 aiohttp/3.14.5\r\n\r\n{"ok":true}',
    "200 chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
}


def load(path: str | None) -> Any:
    if path is None:
        from relay.http import wire

        return wire
    spec = importlib.util.spec_from_file_location("wire_under_test", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def per_answer_us(wire: Any, data: bytes, n: int) -> float:
    class Reader(wire.AnswerReader):  # type: ignore[misc,name-defined]
        def close(self) -> None:
            pass

    reader = Reader(1024)
    feed = getattr(reader, "_feed", None)
    started = time.perf_counter()
    for _ in range(n):
        reader._reset()
        if feed is not None:
            reader._feed(data)
        else:  # the hand-written parser before issue 15
            reader._buf += data
            reader._parse()
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wire", help="another relay/http/wire.py to measure")
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    wire = load(args.wire)
    for name, data in ANSWERS.items():
        rounds = [per_answer_us(wire, data, args.n) for _ in range(5)]
        print(f"{name:12s} {statistics.median(rounds):6.2f} us per answer (median of 5)")


if __name__ == "__main__":
    main()
