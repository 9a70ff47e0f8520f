"""The dashboard at ``/ui/`` (SPEC.md, "Dashboard"), served by ``clip-relay api`` on the API's
own origin: server-rendered pages (Jinja2, autoescaped), a chart drawn as SVG on the server,
a little JavaScript from ``static/``, every asset served here.

- :mod:`relay.ui.routes`: the routes, mounted by :func:`mount` as a sub-application;
- :mod:`relay.ui.guard`: sessions, CSRF, HTML errors and the security headers;
- :mod:`relay.ui.session`: the sealed session cookie;
- :mod:`relay.ui.views`: the pages and the actions; :mod:`relay.ui.chart`: the chart.

A part of the API (it reads the API's application keys, its key check and its watch
shape); only :mod:`relay.api.app` imports it.
"""

from relay.ui.routes import mount

__all__ = ["mount"]
