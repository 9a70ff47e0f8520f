"""``clip-relay watches ...``, the operator CLI, as a process against the real API on
loopback (SPEC.md, "Processes and commands"): tables for people, the API's own documents
with ``--json``, exit 1 naming the problem's status and title on an API error."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.devtools.receiver import Receiver
from tests.conftest import TENANT_A_KEY, ApiFactory, auth, serving
from tests.test_worker import register, sim_video, wait_watch

Api = TestClient[web.Request, web.Application]
Rec = tuple[Receiver, str]
CLI = str(Path(sys.executable).with_name("clip-relay"))
COMMANDS = ("list", "get", "deliveries", "redeliver", "cancel", "rotate-secret", "ping", "recover")
NEVER_DONE = [{"status": "analyzing", "progress": 10, "after": 0}]


async def cli(api: Api | None, *args: str, key: str = TENANT_A_KEY) -> tuple[int, str, str]:
    """Run ``clip-relay watches *args`` with RELAY_API_URL/RELAY_API_KEY set for *api*."""
    env = dict(os.environ, RELAY_API_KEY=key, LOG_FORMAT="console")
    if api is not None:
        env["RELAY_API_URL"] = str(api.make_url("")).rstrip("/")
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "watches",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def api_json(api: Api, path: str) -> Any:
    return await (await api.get(path, headers=auth())).json()


async def a_watch_doc(api: Api, sim: Api) -> dict[str, Any]:
    """The document of one real watch (of a video that never finishes), to copy."""
    vid = await sim_video(sim, timeline=NEVER_DONE)
    one = await register(api, (Receiver(), "http://127.0.0.1:9"), vid)
    doc: dict[str, Any] = await api_json(api, f"/v1/watches/{one['id']}")
    return doc


def paged(
    doc: dict[str, Any],
    pages: int,
    *,
    fail_from: int | None = None,
    video: Callable[[int], str] | None = None,
    on_ask: Callable[[], None] | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A relay's ``GET /v1/watches`` for :func:`serving`: *pages* pages of copies of *doc*
    (as many as asked, each its own id; cursors ``c1``, ``c2``, ...), a 500 from page
    *fail_from* on; *video* names a page's video id, *on_ask* is told of each request."""

    async def handle(request: web.Request) -> web.Response:
        if on_ask is not None:
            on_ask()
        page = int(request.query.get("cursor", "c0")[1:])
        if fail_from is not None and page >= fail_from:
            return web.json_response({"title": "Internal Server Error", "status": 500}, status=500)
        same = {"videoId": video(page)} if video is not None else {}
        n = int(request.query.get("limit", "100"))
        data = [doc | {"id": f"wat_{page:02d}{i:022d}", **same} for i in range(n)]
        more = f"c{page + 1}" if page < pages - 1 else None
        return web.json_response({"data": data, "nextCursor": more})

    return handle


async def test_list_and_get_show_what_the_api_shows(api: Api, sim: Api, receiver: Rec) -> None:
    """``list --json`` and ``get ID --json`` print the API's documents; without --json, a
    table naming each watch; filters by status and video, whose id may begin with "-"."""
    vids = [await sim_video(sim, timeline=NEVER_DONE) for _ in range(3)]
    # a ScaleReach id may begin with "-": ``--video-id -x...`` is still the option's value
    vids[1] = await sim_video(sim, id="-" + vids[1][1:], timeline=NEVER_DONE)
    watches = [await register(api, receiver, v) for v in vids]
    code, out, _ = await cli(api, "list", "--json")
    assert code == 0
    assert json.loads(out)["data"] == (await api_json(api, "/v1/watches"))["data"]
    code, out, _ = await cli(api, "get", watches[0]["id"], "--json")
    assert code == 0 and json.loads(out) == await api_json(api, f"/v1/watches/{watches[0]['id']}")
    code, out, _ = await cli(api, "list", "--video-id", vids[1], "--status", "watching")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "STATUS", "VIDEO"]
    assert len(lines) == 2 and lines[1].split()[:3] == [watches[1]["id"], "watching", vids[1]]
    code, out, _ = await cli(api, "get", watches[2]["id"])
    assert code == 0 and watches[2]["callbackUrl"] in out and "videoId" in out
    code, out, _ = await cli(api, "list", "--limit", "2", "--json")
    listed = (await api_json(api, "/v1/watches"))["data"]
    first = json.loads(out)
    assert first["data"] == listed[:2] and first["nextCursor"]
    # a script goes on where it stopped; the last page says there is no more
    code, out, _ = await cli(api, "list", "--cursor", first["nextCursor"], "--json")
    assert code == 0 and json.loads(out) == {"data": listed[2:], "nextCursor": None}
    code, out, _ = await cli(api, "list", "--limit", "1", "--status", "watching")
    more = out.splitlines()[-1].split()
    assert more[:2] == ["more:", "--cursor"]
    assert more[3:] == ["--status", "watching", "--limit", "1"]
    code, out, _ = await cli(api, "list", *more[1:], "--json")  # as the hint says
    assert code == 0 and json.loads(out)["data"] == listed[1:2]
    code, out, err = await cli(api, "list", "--limit", "-1")
    assert code == 2 and out == "" and "--limit: must be 0 (all) or a positive" in err


async def test_actions_on_a_delivered_watch(api: Api, sim: Api, receiver: Rec, worker: Any) -> None:
    """deliveries, redeliver, rotate-secret, ping, recover and cancel, each with and without
    --json."""
    rec = receiver[0]
    w = await register(api, receiver, await sim_video(sim))
    wid = w["id"]
    await wait_watch(api, wid)
    code, out, _ = await cli(api, "deliveries", wid, "--json")
    assert code == 0 and json.loads(out) == await api_json(api, f"/v1/watches/{wid}/deliveries")
    code, out, _ = await cli(api, "deliveries", wid)
    assert code == 0 and out.splitlines()[0].split()[:2] == ["ATTEMPT", "EVENT"]
    assert "clips.ready" in out and "204" in out
    code, out, _ = await cli(api, "redeliver", wid, "--json")
    assert code == 0 and json.loads(out)["id"] == wid
    await wait_watch(api, wid)
    code, out, _ = await cli(api, "rotate-secret", wid, "--json")
    new_secret = json.loads(out)["secret"]
    assert code == 0 and new_secret.startswith("whsec_")
    code, out, _ = await cli(api, "rotate-secret", wid)
    assert code == 0 and "new secret: whsec_" in out
    code, out, _ = await cli(api, "ping", wid)
    assert code == 0 and "watch.ping" in out
    await rec.wait_for(2, timeout=5)  # unique ids: clips.ready (sent twice), the ping
    assert [e.event["type"] for e in rec.events][-1] == "watch.ping"
    code, out, _ = await cli(api, "recover", "--since", "2026-01-01T00:00:00Z", "--json")
    assert code == 0 and json.loads(out) == {"count": 0}
    code, out, _ = await cli(
        api, "recover", "--since", "2026-01-01T00:00:00Z", "--until", "2026-02-01T00:00:00Z"
    )
    assert code == 0 and out.startswith("0 ")
    code, out, _ = await cli(api, "cancel", wid)
    assert code == 0 and "cancelled" in out
    assert (await api_json(api, f"/v1/watches/{wid}"))["status"] == "cancelled"
    # (the API answers 204: --json prints the watch as the API has it, not a made-up doc)
    code, out, _ = await cli(api, "cancel", wid, "--json")
    assert code == 0 and json.loads(out) == await api_json(api, f"/v1/watches/{wid}")


async def test_api_errors_exit_1_naming_status_and_title(api: Api) -> None:
    """A wrong key names 401; an unknown watch 404; a bad time 422 and its field; no key at
    all is a usage error (2); an unreachable API exits 1."""
    code, out, err = await cli(api, "list", key="wrong-key")
    assert code == 1 and "401 Unauthorized" in err and out == ""
    code, _, err = await cli(api, "get", "wat_" + "a" * 24)
    assert code == 1 and "404" in err
    code, _, err = await cli(api, "recover", "--since", "yesterday")
    assert code == 1 and "422" in err and err.count("since:") == 1, err  # the field, once
    code, _, err = await cli(api, "list", key="")
    assert code == 2 and "RELAY_API_KEY" in err
    code, _, err = await cli(None, "list", "--api-url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach" in err


async def test_a_bad_timeout_or_a_mangled_key_is_a_usage_error_not_a_traceback(api: Api) -> None:
    """``--timeout`` of 0, below 0 or not a number; an API key with a character no key has
    (pasted through a wrong encoding): one line each, exit 2 (a traceback before)."""
    runs = await asyncio.gather(
        *(cli(api, "list", "--timeout", t) for t in ("-1", "0", "nan", "soon")),
        cli(api, "list", key="k\u00e9y"),
    )
    for code, out, err in runs:
        assert code == 2 and out == "" and "Traceback" not in err, err
    assert "--timeout" in runs[0][2] and "above 0" in runs[0][2]
    assert "API key" in runs[-1][2]
    # an empty or slashed watch id is refused here, not sent (it would name the list)
    for bad in ("", " ", "wat_1/deliveries"):
        code, out, err = await cli(api, "get", bad)
        assert code == 2 and out == "" and "is not a watch id" in err, err


async def test_every_command_has_help() -> None:
    """``--help`` on the group and on every command."""
    runs = await asyncio.gather(
        cli(None, "--help"), *(cli(None, name, "--help") for name in COMMANDS)
    )
    for name, (code, out, _) in zip(("watches", *COMMANDS), runs, strict=True):
        assert code == 0 and "usage: clip-relay watches" in out, name
        assert "--json" in out or name == "watches"


async def test_a_bad_api_url_is_a_usage_error_and_a_password_in_it_is_never_printed() -> None:
    """An empty or malformed RELAY_API_URL/--api-url is a usage error (2, a traceback
    before); a password in the URL is printed as *** when the relay cannot be reached (it
    was printed twice); a watch id of ``.`` is refused (it reached the list route). A
    review, 2026-12-06."""
    runs = await asyncio.gather(
        cli(None, "list", "--api-url", ""),
        cli(None, "list", "--api-url", "http://[::1"),
        cli(None, "list", "--api-url", "ftp://127.0.0.1:9"),
        cli(None, "get", ".", "--api-url", "http://127.0.0.1:9"),
    )
    for code, out, err in runs:
        assert code == 2 and out == "" and "Traceback" not in err, err
    assert "http(s) URL" in runs[0][2] and "is not a watch id" in runs[-1][2]

    code, _, err = await cli(None, "list", "--api-url", "http://admin:s3cr3t-pw@127.0.0.1:9")
    assert code == 1 and "cannot reach http://admin:***@127.0.0.1:9" in err, err
    assert "s3cr3t-pw" not in err


async def test_a_change_sent_and_not_answered_says_it_may_have_been_done() -> None:
    """A relay that takes the request and never answers: for ``rotate-secret`` the CLI
    says a secret may have been made and not shown, for ``redeliver`` that it may have
    been done -- not "cannot reach" (the request did reach it). A review, 2026-12-06."""
    requests = 0
    done = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        await reader.read(65536)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        wid = "wat_" + "a" * 24
        args = ("--api-url", url, "--timeout", "0.5")
        code, _, err = await cli(None, "rotate-secret", wid, *args)
        assert code == 1 and "may have been made and not shown" in err, err
        code, _, err = await cli(None, "redeliver", wid, *args)
        assert code == 1 and "may have been done or not" in err and wid in err, err
        code, _, err = await cli(None, "recover", "--since", "2026-12-01T00:00:00Z", *args)
        assert code == 1 and "run it again" in err, err
        assert requests >= 2 and "cannot reach" not in err
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_busy_answers_are_tried_again_and_a_foreign_answer_is_named() -> None:
    """The CLI tries a read again on 503 (twice, as its client is set up), so a relay
    briefly busy still lists; an answer of another shape (not a clip-relay API) exits 1
    saying so, with a password in --api-url printed as ***; ``--limit 0`` lists every
    watch (a mutation review, 2026-12-06)."""
    answers = iter(["busy", "busy", "list", "foreign", "list"])

    async def handle(request: web.Request) -> web.Response:
        answer = next(answers)
        if answer == "busy":
            return web.json_response(
                {"title": "Busy", "status": 503}, status=503, headers={"Retry-After": "0"}
            )
        if answer == "foreign":
            return web.json_response({"data": [{}]})
        return web.json_response({"data": [], "nextCursor": None})

    async with serving(handle) as url:
        code, out, err = await cli(None, "list", "--json", "--api-url", url)
        assert code == 0 and json.loads(out) == {"data": [], "nextCursor": None}, err
        masked = url.replace("http://", "http://admin:s3cr3t-pw@")
        code, _, err = await cli(None, "list", "--api-url", masked)
        assert code == 1 and "did not answer as a clip-relay API" in err, err
        assert "s3cr3t-pw" not in err and "admin:***@" in err
        code, out, err = await cli(None, "list", "--limit", "0", "--json", "--api-url", url)
        assert code == 0 and json.loads(out) == {"data": [], "nextCursor": None}, err


async def test_list_all_reads_every_page_of_the_real_api(
    make_api: ApiFactory, sim: Api, receiver: Rec
) -> None:
    """``--limit 0`` lists every watch through as many pages of the API as there are (230
    watches: three): printed a page at a time (the next test shows that), the JSON is still
    the one document ``json.dumps`` would write, the table a row per watch under one
    header; a limit ending mid-page ends there. (The output is the one a whole list held in
    memory gave: this pins it across the change.)"""
    api = await make_api(rate_limit=10_000)
    vid = await sim_video(sim, timeline=NEVER_DONE)
    for _ in range(230):
        await register(api, receiver, vid)
    listed: list[Any] = []
    cursor = ""
    while True:
        page = await api_json(api, f"/v1/watches?limit=100{cursor}")
        listed += page["data"]
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert len(listed) == 230
    code, out, err = await cli(api, "list", "--limit", "0", "--json")
    assert code == 0, err
    assert out == json.dumps({"data": listed, "nextCursor": None}, indent=2) + "\n"
    code, out, _ = await cli(api, "list", "--limit", "0")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 231 and lines[0].split()[:2] == ["ID", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == [w["id"] for w in listed]
    assert len({line.index("watching") for line in lines[1:]}) == 1  # (aligned)
    code, out, _ = await cli(api, "list", "--limit", "150", "--json")  # (a page and a half)
    assert json.loads(out)["data"] == listed[:150] and json.loads(out)["nextCursor"]


async def test_list_prints_each_page_before_it_reads_the_next(api: Api, sim: Api) -> None:
    """Each page is printed before the next is asked for: what was printed when each page
    was asked (``--json`` holds back one watch for its comma). Before, nothing was printed
    until the last page had come. A page with a longer video id widens the table: the
    header comes again, every row under its header's columns."""
    from clip_relay_client import Client
    from relay.ops_cli import parser, run

    doc = await a_watch_doc(api, sim)
    printed: list[str] = []
    asked_after: list[int] = []

    handle = paged(
        doc,
        3,
        video=lambda page: "v" * (10 if page == 0 else 60),
        on_ask=lambda: asked_after.append(sum(t.count("wat_") for t in printed)),
    )

    async with serving(handle) as url:
        for flags, expected in ((["--json"], [0, 99, 199]), ([], [0, 100, 200])):
            printed.clear()
            asked_after.clear()
            args = parser().parse_args(["list", "--limit", "0", "--api-url", url, *flags])

            def listing(args: Any = args) -> None:
                with Client(url, "k") as relay:
                    run(args, relay, printed.append)

            await asyncio.get_running_loop().run_in_executor(None, listing)
            assert asked_after == expected, (flags, asked_after)
    lines = "\n".join(printed).splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("ID ")]
    assert headers == [0, 101] and len(lines) == 302  # (again above the widened page)
    for i, line in enumerate(lines):
        header = lines[max(h for h in headers if h <= i)]
        if i not in headers:  # (each column where its header says)
            assert line.index(" watching ") + 1 == header.index("STATUS"), line
            assert line.index(" v") + 1 == header.index("VIDEO"), line
            assert line.index(" 20") + 1 == header.index("UPDATED"), line


async def test_a_list_cut_by_a_failing_page_keeps_what_it_printed(api: Api, sim: Api) -> None:
    """A page that fails after two were printed: exit 1 naming the error, the 200 rows
    printed stay, and stderr says where to go on from."""
    doc = await a_watch_doc(api, sim)

    handle = paged(doc, 10, fail_from=2)

    async with serving(handle) as url:
        code, out, err = await cli(None, "list", "--limit", "0", "--api-url", url)
    assert code == 1 and "500" in err, err
    assert len(out.splitlines()) == 201  # the header and the two pages
    assert "listed 200 before the error; go on with --cursor c2 --limit 0" in err, err
    async with serving(handle) as url:
        code, out, err = await cli(None, "list", "--limit", "0", "--json", "--api-url", url)
    assert code == 1 and "listed 200 before the error" in err, err
    assert out.count('"id": "wat_') == 200  # (every watch listed is printed)
    async with serving(handle) as url:  # (a limit: going on lists what it left)
        code, out, err = await cli(None, "list", "--limit", "250", "--api-url", url)
    assert code == 1 and "go on with --cursor c2 --limit 50" in err, err


async def test_output_its_reader_stops_reading_ends_without_a_traceback(api: Api, sim: Api) -> None:
    """``clip-relay watches list ... | head``: the reader closes the pipe early; the CLI
    stops there, exit 1, no ``BrokenPipeError`` traceback (a new user's finding)."""
    doc = await a_watch_doc(api, sim)

    handle = paged(doc, 10)

    async with serving(handle) as url:
        read_end, write_end = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "watches",
            "list",
            "--limit",
            "0",
            "--json",
            "--api-url",
            url,
            env=dict(os.environ, RELAY_API_KEY=TENANT_A_KEY),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(write_end)
        head = await asyncio.get_running_loop().run_in_executor(None, os.read, read_end, 100)
        os.close(read_end)  # (a whole list is ~1 MB: far more than a pipe holds)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert head.startswith(b"{")
    assert proc.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err, err
    # a short output, buffered (no PYTHONUNBUFFERED, as at a terminal's pipe), whose reader
    # is gone before it is written: written at the end, where it failed at exit before
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    async with serving(handle) as url:
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "watches",
            "list",
            "--limit",
            "3",
            "--api-url",
            url,
            env=dict(env, RELAY_API_KEY=TENANT_A_KEY),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(write_end)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1 and b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_a_change_that_never_connected_says_cannot_reach() -> None:
    """A change whose connection was never made (refused, timed out connecting, no pooled
    connection free) did not reach the relay: "cannot reach", not "may have been done"."""
    from argparse import Namespace

    import httpx

    from clip_relay_client import ConnectionFailed
    from relay.ops_cli import _unreached

    args = Namespace(action="redeliver", api_url="http://127.0.0.1:9", id="wat_x")
    for cause in (httpx.ConnectError("x"), httpx.ConnectTimeout("x"), httpx.PoolTimeout("x")):
        failed = ConnectionFailed("POST http://127.0.0.1:9/v1/watches/wat_x/redeliver")
        failed.__cause__ = cause
        assert _unreached(args, failed).startswith("cannot reach"), cause
    failed.__cause__ = httpx.ReadTimeout("x")
    assert "may have been done or not" in _unreached(args, failed)
