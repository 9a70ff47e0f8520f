"""The simulated CDN: signed, expiring links to clip files and thumbnails, and serving them.

A link carries ``expires`` (Unix time) and ``sig``, an HMAC-SHA256 of the object and its expiry
under the simulator's secret (:meth:`SimState.sign <.state.SimState.sign>`). It needs no Bearer
token -- the signature is the auth -- and a bad or expired one gets the 403 XML an S3-style CDN
answers.
"""

from __future__ import annotations

import hmac
from typing import Final

from aiohttp import web

from relay.devtools.upstream_sim.state import STATE, SimState

CDN_KINDS: Final = {"clips": "video/mp4", "thumbs": "image/jpeg"}
CDN_BODIES: Final = {
    "clips": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    "thumbs": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9",
}
CDN_DENIED: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>AccessDenied</Code><Message>Request has expired or the signature does "
    b"not match</Message></Error>"
)


def signed_url(state: SimState, origin: str, kind: str, name: str, expires: int) -> str:
    return f"{origin}/cdn/{kind}/{name}?expires={expires}&sig={state.sign(kind, name, expires)}"


async def serve_cdn(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kind = request.match_info["kind"]
    name = request.match_info["name"]
    content_type = CDN_KINDS.get(kind)
    if content_type is None:
        return web.Response(status=404, body=b"Not Found", content_type="text/plain")
    sig = request.rel_url.query.get("sig", "")
    try:
        expires = int(request.rel_url.query.get("expires", ""))
    except ValueError:
        expires = -1
    good = hmac.compare_digest(sig.encode(), state.sign(kind, name, expires).encode())
    if not good or state.clock() >= expires:
        return web.Response(status=403, body=CDN_DENIED, content_type="application/xml")
    return web.Response(body=CDN_BODIES[kind], content_type=content_type)
