"""``clip-relay watches ...``: the operator CLI over the API, through the client SDK.

``RELAY_API_URL`` and ``RELAY_API_KEY`` (or ``--api-url``/``--api-key``) say which relay and
tenant; tables for people, ``--json`` for scripts (the API's own documents); an API error
exits 1 naming the problem's status and title. Imported by :mod:`relay.cli` only when the
command is ``watches``, and the only module of ``relay`` that uses :mod:`clip_relay_client`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from clip_relay_client import (
    MAX_PAGE,
    ApiError,
    Client,
    Delivery,
    Watch,
    WatchStatus,
    shown_url,
)
from relay.constants import EVENT_TYPES

DEFAULT_URL = "http://127.0.0.1:8080"
STATUSES = ("watching", "delivering", "delivered", "failed", "disabled", "cancelled")
Out = Callable[[str], None]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api-url",
        type=_api_url,
        default=os.environ.get("RELAY_API_URL", DEFAULT_URL),
        help=f"the relay's base URL (default: RELAY_API_URL, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("RELAY_API_KEY", ""),
        help=(
            "an API key of RELAY_API_KEYS: its tenant's watches (default: RELAY_API_KEY;"
            " prefer it: a flag's value shows in ps and in the shell's history)"
        ),
    )
    common.add_argument("--json", action="store_true", help="print the API's JSON documents")
    common.add_argument(
        "--timeout", type=_seconds, default=10.0, help="seconds per request (more than 0)"
    )
    return common


LIST_LIMIT = 100  # watches listed when no --limit is given


def _limit(value: str) -> int:
    """``--limit``: a whole number, 0 (all) or more."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(
            f"must be 0 (all) or a positive whole number, not {value!r}"
        )
    return n


def _seconds(value: str) -> float:
    """``--timeout``: a number of seconds, more than 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not (0 < seconds < 10**6):  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {value!r}")
    return seconds


def _api_url(value: str) -> str:
    """``--api-url``: an http(s) URL with a host (checked here: an empty RELAY_API_URL
    would otherwise end in a traceback). The value is not echoed: it may hold a password."""
    try:
        shown_url(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be the relay's http(s) URL with a host, e.g. {DEFAULT_URL}"
        ) from None
    return value


def _watch_id(value: str) -> str:
    """A watch id: a path segment, not empty (an empty one would name the list), nor a
    dot segment (``.`` and ``..`` name the list, or the API's root, once the URL is
    normalised)."""
    if not value.strip() or "/" in value or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"is not a watch id: {value!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """``clip-relay watches`` and its commands."""
    common = _common()
    top = argparse.ArgumentParser(
        prog="clip-relay watches",
        description="Look at and act on a tenant's watches through the relay's API.",
    )
    sub = top.add_subparsers(dest="action", metavar="COMMAND", required=True)

    def add(name: str, text: str, *, watch_id: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        if watch_id:
            p.add_argument("id", metavar="ID", type=_watch_id, help="the watch id (wat_...)")
        return p

    lister = add("list", "list watches, newest first", watch_id=False)
    lister.add_argument("--video-id", help="only the watches of this video")
    lister.add_argument("--status", choices=STATUSES, help="only the watches in this status")
    lister.add_argument(
        "--limit",
        type=_limit,
        default=LIST_LIMIT,
        help="at most this many (default 100; 0: all, printed a page at a time)",
    )
    lister.add_argument("--cursor", help="go on where an earlier list stopped (its nextCursor)")
    add("get", "show one watch")
    add("deliveries", "list every delivery attempt of a watch, oldest first")
    add("redeliver", "send a watch's last event again (same webhook-id)")
    add("cancel", "cancel a watch: nothing is delivered afterwards")
    add("rotate-secret", "give a watch a new webhook secret (printed once)")
    add("ping", "send the watch's receiver one signed watch.ping event")
    recover = add(
        "recover", "deliver again every watch that became failed since a time", watch_id=False
    )
    recover.add_argument("--since", required=True, help="RFC 3339, e.g. 2026-11-28T10:00:00Z")
    recover.add_argument("--until", help="RFC 3339 (default: now), not included")
    return top


def _time(value: Any) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else "-"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Plain aligned columns."""
    cells = [list(header), *_cells(rows)]
    return _aligned(cells, [max(len(r[i]) for r in cells) for i in range(len(header))])


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    """Rows as text ("-" for none)."""
    return [["-" if v is None else str(v) for v in row] for row in rows]


def _aligned(cells: Sequence[Sequence[str]], widths: Sequence[int]) -> str:
    """*cells* in columns of *widths*, two spaces apart."""
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def watch_card(w: Watch) -> str:
    """One watch, field by field."""
    rows = [(k, json.dumps(v) if isinstance(v, dict | list) else v) for k, v in w.raw.items()]
    return table(rows, ("FIELD", "VALUE"))


def delivery_rows(attempts: Sequence[Delivery]) -> str:
    """Attempts as a table."""
    rows = [
        (d.attempt, d.event_type, d.event_id, _time(d.at), d.status_code, d.error, d.latency_ms)
        for d in attempts
    ]
    return table(rows, ("ATTEMPT", "EVENT", "EVENT ID", "AT", "CODE", "ERROR", "MS"))


def run(args: argparse.Namespace, relay: Client, out: Out) -> None:
    """Carry out one command."""
    as_json = args.json

    def emit(doc: Any, text: str) -> None:
        out(json.dumps(doc, indent=2) if as_json else text)

    action = args.action
    if action == "list":
        # (a cursor belongs to its filters: the hints repeat them, and a limit)
        kept = "".join(
            f" --{name} {value}"
            for name, value in (("video-id", args.video_id), ("status", args.status))
            if value is not None
        )
        filters = kept + ("" if args.limit == LIST_LIMIT else f" --limit {args.limit}")
        listing: JsonList | WatchTable = JsonList(out) if as_json else WatchTable(out)
        pages = list_pages(relay, args.video_id, args.status, args.limit, args.cursor)
        cursor = args.cursor
        try:
            for found, ends_at in pages:
                listing.add(found)
                cursor = ends_at
        except BrokenPipeError:
            raise
        except BaseException:  # (an error, an answer of another shape, Ctrl-C)
            listing.cut()
            if listing.count and cursor:  # (printed: say where to go on from, for the rest)
                left = 0 if args.limit <= 0 else args.limit - listing.count
                print(
                    f"listed {listing.count} before the error; go on with --cursor"
                    f" {cursor}{kept} --limit {left}",
                    file=sys.stderr,
                )
            raise
        listing.end(cursor)
        if cursor and not as_json:
            out(f"more: --cursor {cursor}{filters}")
    elif action == "get":
        w = relay.get_watch(args.id)
        emit(w.raw, watch_card(w))
    elif action == "deliveries":
        attempts = relay.deliveries(args.id)
        emit({"data": [d.raw for d in attempts]}, delivery_rows(attempts))
    elif action == "redeliver":
        w = relay.redeliver(args.id)
        emit(w.raw, f"{w.id}: {w.status}, its last event is being sent again")
    elif action == "cancel":
        relay.cancel_watch(args.id)  # (a 204: with --json, the watch as the API now has it)
        emit(relay.get_watch(args.id).raw if as_json else {}, f"{args.id}: cancelled")
    elif action == "rotate-secret":
        r = relay.rotate_secret(args.id)
        until = _time(r.previous_secret_expires_at)
        emit(r.raw, f"new secret: {r.secret}\nthe previous one signs beside it until {until}")
    elif action == "ping":
        relay.ping(args.id)
        emit({"watchId": args.id}, f"{args.id}: watch.ping queued (its deliveries show the answer)")
    elif action == "recover":
        n = relay.recover(args.since, args.until)
        emit({"count": n}, f"{n} failed watch(es) put back to delivering")


def list_pages(
    relay: Client,
    video_id: str | None,
    status: WatchStatus | None,
    limit: int,
    cursor: str | None,
) -> Iterator[tuple[list[Watch], str | None]]:
    """Up to *limit* watches (0: all) from *cursor* on, a page at a time, each with the
    cursor where it ends (None: there are no more): pages sized so that the last one ends
    at the limit. A page is read when the one before is used: ``--limit 0`` of a tenant's
    million watches holds one page, not the million."""
    listed = 0
    while True:
        want = MAX_PAGE if limit <= 0 else min(limit - listed, MAX_PAGE)
        page = relay.list_watches_page(video_id, status, want, cursor)
        cursor = page.next_cursor
        listed += len(page.data)
        yield page.data, cursor
        if cursor is None or (limit > 0 and listed >= limit):
            return


class WatchTable:
    """Watches as a table, printed a page at a time. The columns whose values have a known
    size start at it (an id, a status, an event type, a time), so only VIDEO can need more
    on a later page: the header is printed again above the rows it widened."""

    HEADER = ("ID", "STATUS", "VIDEO", "EVENT", "UPDATED", "CALLBACK")

    def __init__(self, out: Out) -> None:
        self.out = out
        self.count = 0
        self.widths = [
            len("wat_") + 24,
            max(map(len, STATUSES)),
            len("VIDEO"),
            max(map(len, EVENT_TYPES)),
            len("2026-01-01T00:00:00Z"),
            0,  # (the last column is not padded)
        ]
        self.started = False

    def add(self, watches: Sequence[Watch]) -> None:
        """Print *watches* (the header first, and again when the columns widened)."""
        cells = _cells(
            [
                (w.id, w.status, w.video_id, w.last_event_type, _time(w.updated_at), w.callback_url)
                for w in watches
            ]
        )
        widths = list(self.widths)
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        if not self.started or widths[:-1] != self.widths[:-1]:
            cells.insert(0, list(self.HEADER))
            self.started = True
        self.widths = widths
        if cells:
            self.out(_aligned(cells, widths))
        self.count += len(watches)

    def end(self, cursor: str | None) -> None:
        """The list is over (the header alone when it was empty)."""
        self.add([])

    def cut(self) -> None:
        """The list stops short: every row is printed already."""


class JsonList:
    """``{"data": [...], "nextCursor": ...}`` as ``json.dumps(doc, indent=2)`` writes it,
    printed a page at a time (each watch once the next one, or the end, says whether a
    comma follows it)."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.count = 0
        self.last: str | None = None

    def add(self, watches: Sequence[Watch]) -> None:
        """Print the watches before the last of *watches*; keep that one."""
        for w in watches:
            item = textwrap.indent(json.dumps(w.raw, indent=2), "    ")
            self.out('{\n  "data": [' if self.count == 0 else f"{self.last},")
            self.last = item
            self.count += 1

    def end(self, cursor: str | None) -> None:
        """Close the document with its next cursor."""
        cursor_json = json.dumps(cursor)
        if self.last is None:
            self.out(f'{{\n  "data": [],\n  "nextCursor": {cursor_json}\n}}')
        else:
            self.out(f'{self.last}\n  ],\n  "nextCursor": {cursor_json}\n}}')

    def cut(self) -> None:
        """The list stops short (a page failed): the watch kept is printed, the document
        left unclosed -- not JSON a script could take for the whole list."""
        if self.last is not None:
            self.out(self.last)
            self.last = None


def glue_values(top: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--video-id -x1`` as ``--video-id=-x1``: a ScaleReach video id may begin with ``-``,
    which argparse would otherwise take for an option and refuse."""
    takes_value = {
        opt
        for p in [top, *_subparsers(top)]
        for a in p._actions
        if a.option_strings and a.nargs is None
        for opt in a.option_strings
    }
    out: list[str] = []
    items = iter(argv)
    for item in items:
        nxt = next(items, None) if item in takes_value else None
        out.append(item if nxt is None else f"{item}={nxt}")
    return out


def _subparsers(top: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [
        p
        for a in top._actions
        if isinstance(a, argparse._SubParsersAction)
        for p in a.choices.values()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``clip-relay watches ...``; the exit status."""
    top = parser()
    args = top.parse_args(glue_values(top, sys.argv[1:] if argv is None else argv))
    if not args.api_key:
        print("clip-relay watches: set RELAY_API_KEY or give --api-key", file=sys.stderr)
        return 2
    if not (args.api_key.isascii() and args.api_key.isprintable()):  # (no key has such)
        print(
            "clip-relay watches: the API key has a character an API key cannot have"
            " (not printable ASCII): copy it again",
            file=sys.stderr,
        )
        return 2
    try:
        with Client(args.api_url, args.api_key, timeout=args.timeout, max_retries=2) as relay:
            run(args, relay, print)
        sys.stdout.flush()  # (a pipe's buffer: written here, where a closed pipe is caught)
    except ApiError as exc:
        print(f"clip-relay watches: {exc.status} {exc.title}", file=sys.stderr)
        first = exc.errors[0] if exc.errors else {}
        if exc.detail and exc.detail != f"{first.get('field')}: {first.get('message')}":
            print(exc.detail, file=sys.stderr)  # (not the first field's error twice)
        for e in exc.errors:
            print(f"  {e.get('field')}: {e.get('message')}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # (``... | head``: the reader stopped reading)
        # (what is left in stdout's buffer goes nowhere: no error at exit; a stdout
        # without a file descriptor has nothing to replace)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except httpx.HTTPError as exc:  # (ConnectionFailed is one)
        print(f"clip-relay watches: {_unreached(args, exc)}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError) as exc:  # a JSON answer of another shape
        shown = shown_url(args.api_url)
        print(
            f"clip-relay watches: {shown} did not answer as a clip-relay API ({exc!r}):"
            " is --api-url the relay's?",
            file=sys.stderr,
        )
        return 1
    return 0


ACTS = {"redeliver", "cancel", "rotate-secret", "ping", "recover"}  # commands that change
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _unreached(args: argparse.Namespace, exc: httpx.HTTPError) -> str:
    """What a transport error means to the operator: the relay not reached, or (a command
    that changes something, sent and not answered) not known whether it was done."""
    cause = exc.__cause__ or exc
    shown = shown_url(args.api_url)
    if args.action not in ACTS or isinstance(cause, NOT_SENT):
        return f"cannot reach {shown}: {exc}"
    text = f"no answer from {shown} ({exc}): the {args.action} may have been done or not;"
    if args.action == "rotate-secret":
        return f"{text} a new secret may have been made and not shown: rotate again for one"
    if args.action == "recover":
        return f"{text} run it again (a watch put back is skipped)"
    return f"{text} see `clip-relay watches get {args.id}` and its deliveries"
