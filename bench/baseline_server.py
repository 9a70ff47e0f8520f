"""The registration baseline: a minimal aiohttp server, run as its own process.

``python bench/baseline_server.py --port P --redis URL``

- ``POST /watches``: ``orjson.loads`` of the body, one Redis ``SET``, ``201 {"id"}`` -- the
  least a registration can do (same Redis, same client library and settings as the API);
- ``POST /trivial``: read the body, ``204`` -- to measure the load generator alone.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from redis.asyncio import Redis

from relay.store.connection import connect

REDIS = web.AppKey("redis", Redis)


async def register(request: web.Request) -> web.Response:
    """Parse the JSON body and store it under a fresh key."""
    body = await request.read()
    data = orjson.loads(body)
    wid = "wat_" + secrets.token_hex(12)
    await request.app[REDIS].set(f"bench:base:{wid}", body)
    return web.Response(
        status=201,
        body=orjson.dumps({"id": wid, "videoId": data.get("videoId")}),
        content_type="application/json",
    )


async def trivial(request: web.Request) -> web.Response:
    """Read the body and answer 204."""
    await request.read()
    return web.Response(status=204)


def create_app(redis_url: str) -> web.Application:
    """The baseline application."""
    app = web.Application()

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        redis = connect(redis_url)
        app[REDIS] = redis
        yield
        await redis.aclose()

    app.cleanup_ctx.append(redis_ctx)
    app.router.add_post("/watches", register)
    app.router.add_post("/trivial", trivial)
    return app


def main() -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="registration baseline server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(args.redis), host="127.0.0.1", port=args.port, access_log=None, print=None
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
