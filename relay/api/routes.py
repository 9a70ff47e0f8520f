"""The API's routes, in one table."""

from __future__ import annotations

from aiohttp import web

from relay.api import openapi, pings, recovery, views

# a watch by its id -- never "recover": another method on that path is a 405, not a watch
WATCH = "/v1/watches/{watch_id:(?!recover$)[^/]+}"
# the views that read (and check) query parameters; every other route takes none
READS_QUERY = frozenset({views.list_watches})
# the views that read a body; every other route takes none (an empty one or {} passes)
READS_BODY = frozenset({views.create_watch, recovery.recover})


def setup_routes(app: web.Application) -> None:
    """Register every route of the registration API."""
    r = app.router
    r.add_post("/v1/watches", views.create_watch, name="watches")
    r.add_get("/v1/watches", views.list_watches)
    r.add_get(WATCH, views.get_watch, name="watch")
    r.add_delete(WATCH, views.cancel_watch)
    r.add_get("/v1/watches/{watch_id}/deliveries", views.list_deliveries)
    r.add_post("/v1/watches/{watch_id}/redeliver", views.redeliver)
    r.add_post("/v1/watches/{watch_id}/rotate-secret", views.rotate_secret)
    r.add_post("/v1/watches/recover", recovery.recover)
    r.add_post("/v1/watches/{watch_id}/ping", pings.ping)
    r.add_get("/healthz", views.healthz)
    r.add_get("/readyz", views.readyz)
    r.add_get("/metrics", views.metrics)
    r.add_get("/openapi.json", openapi.handler)
