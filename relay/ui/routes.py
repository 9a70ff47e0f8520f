"""The dashboard's routes, in one table, and its mounting on the API application."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from relay import logs
from relay.settings import Settings
from relay.ui import views
from relay.ui.guard import SESSIONS, guard, protect
from relay.ui.session import Sessions

log = logs.get("relay.ui")
HERE = Path(str(files(__package__ or "relay.ui")))


def setup_routes(ui: web.Application) -> None:
    """Register every page of the dashboard (paths relative to ``/ui``)."""
    r = ui.router
    r.add_get("/", views.overview, name="overview")
    r.add_get("/login", views.login_form)
    r.add_post("/login", views.login)
    r.add_post("/logout", views.logout)
    r.add_get("/watches", views.watch_list)
    r.add_get("/watches/{watch_id}", views.watch_page)
    r.add_post("/watches/{watch_id}/redeliver", views.redeliver)
    r.add_post("/watches/{watch_id}/cancel", views.cancel)
    r.add_post("/watches/{watch_id}/rotate-secret", views.rotate)
    r.add_post("/watches/{watch_id}/ping", views.ping)
    r.add_get("/recover", views.recover_form)
    r.add_post("/recover", views.recover)
    r.add_static("/static", HERE / "static")


async def _to_slash(request: web.Request) -> web.StreamResponse:
    response = web.HTTPPermanentRedirect("/ui/")
    protect(response.headers)
    raise response


def mount(app: web.Application, settings: Settings) -> None:
    """Serve the dashboard at ``/ui/`` of the API application *app*."""
    if not settings.ui_secret:
        log.warning(
            "RELAY_UI_SECRET is not set: dashboard sessions are sealed with a key of this "
            "process only, so they hold on one API replica only; set it on every replica"
        )
    ui = web.Application(middlewares=[guard])
    ui[SESSIONS] = Sessions(settings.ui_secret, settings.ui_session)
    aiohttp_jinja2.setup(
        ui,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        default_helpers=True,
        auto_reload=False,  # templates are package data: read once
    )
    setup_routes(ui)
    app.router.add_get("/ui", _to_slash)
    app.add_subapp("/ui", ui)
