"""The dashboard's sessions: a sealed cookie (Fernet: AES-CBC + HMAC-SHA256, with its time)
holding the tenant, the id of the API key that signed in (never the key) and the session's
CSRF token; keyed by RELAY_UI_SECRET.

A visitor who has not signed in gets an anonymous session too (no tenant), in a cookie of
its own (:data:`FORM_COOKIE`): it carries the CSRF token of the sign-in form. A session
lasts RELAY_UI_SESSION seconds from sign-in and ends when its key leaves RELAY_API_KEYS (its
id is checked on every request) or at sign-out: its id (:func:`session_id`) is then kept in
Redis until the cookie would have expired, so a copy of the cookie is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import orjson
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

COOKIE = "cr_ui"  # a signed-in session
# a visitor's session before signing in (the sign-in form's CSRF token): a cookie of its own,
# so a sign-in page shown where the browser sent no session cookie (a link from another
# site in a browser that does not say so, see relay.ui.guard.hop) never replaces one
FORM_COOKIE = "cr_ui_form"
PATH = "/ui"
# Strict (SPEC): no request another site starts carries the session. A link to the dashboard
# from another site (chat, mail, a Grafana panel) comes without it, so the guard answers
# such a navigation with a hop (relay.ui.guard.hop) that loads the page again from the
# dashboard itself, with the cookie, rather than a sign-in page whose new session would
# replace the signed-in one in every tab.
SAME_SITE = "Strict"
MAX_COOKIE = 4096  # bytes: a longer cookie was not made here


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie holds. ``tenant`` empty: not signed in."""

    csrf: str
    tenant: str = ""
    key_id: str = ""


class Sessions:
    """Seal and open session cookies."""

    def __init__(self, secret: str, lifetime_s: float) -> None:
        # any text of RELAY_UI_SECRET: the Fernet key is derived from it (a fresh random
        # one when there is none: sessions of this process only)
        material = secret.encode() if secret else secrets.token_bytes(32)
        key = hashlib.sha256(b"clip-relay dashboard session\0" + material).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self.lifetime_s = lifetime_s

    def read(self, request: web.Request) -> Session | None:
        """The request's session, if its cookie was sealed here and has not expired: the
        signed-in one, else the sign-in form's."""
        for name in (COOKIE, FORM_COOKIE):
            found = self._open(request.cookies.get(name, ""))
            if found is not None:
                return found
        return None

    def read_form(self, request: web.Request) -> Session | None:
        """The sign-in form's session alone (:data:`FORM_COOKIE`)."""
        return self._open(request.cookies.get(FORM_COOKIE, ""))

    def _open(self, raw: str) -> Session | None:
        if not raw or len(raw) > MAX_COOKIE:
            return None
        try:
            data = orjson.loads(self._fernet.decrypt(raw, ttl=int(self.lifetime_s)))
            return Session(str(data["c"]), str(data.get("t", "")), str(data.get("k", "")))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None

    def write(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        """Set *session* as the response's cookie (a session not signed in: the form's)."""
        sealed = self._fernet.encrypt(
            orjson.dumps({"c": session.csrf, "t": session.tenant, "k": session.key_id})
        ).decode()
        response.set_cookie(
            COOKIE if session.tenant else FORM_COOKIE,
            sealed,
            max_age=int(self.lifetime_s),
            path=PATH,
            httponly=True,
            samesite=SAME_SITE,
            secure=is_https(request),
        )

    def clear(self, request: web.Request, response: web.StreamResponse) -> None:
        """End the session: the cookie is dropped."""
        response.del_cookie(
            COOKIE, path=PATH, httponly=True, samesite=SAME_SITE, secure=is_https(request)
        )


def new_session(tenant: str = "", key_id: str = "") -> Session:
    """A session with a fresh CSRF token (a new one at every sign-in)."""
    return Session(secrets.token_urlsafe(24), tenant, key_id)


def session_id(session: Session) -> str:
    """The id a signed-out session is remembered by: a digest of its CSRF token (fresh at
    each sign-in), so Redis never holds the token itself."""
    return hashlib.sha256(b"clip-relay session id\0" + session.csrf.encode()).hexdigest()[:32]


def csrf_ok(session: Session | None, given: str) -> bool:
    """Does *given* match the session's CSRF token (compared in constant time)?"""
    if session is None or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "replace"))


def is_https(request: web.Request) -> bool:
    """Was the page asked for over https (here, or at a TLS-terminating proxy)?"""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def done_tag(session: Session, watch_id: str, action: str) -> str:
    """``?done=`` of the page an action of this session's redirects to: the action and a
    MAC under the session's CSRF token, so a link made elsewhere (``?done=cancelled`` on a
    watch nobody cancelled) shows no notice."""
    mac = hmac.new(session.csrf.encode(), f"done\0{watch_id}\0{action}".encode(), "sha256")
    return f"{action}.{mac.hexdigest()[:20]}"


def done_action(session: Session | None, watch_id: str, given: str) -> str | None:
    """The action of a ``?done=`` made by :func:`done_tag` for this session and watch, or
    None (compared in constant time)."""
    action = given.partition(".")[0]
    if session is None or not action:
        return None
    expected = done_tag(session, watch_id, action).encode()
    return action if hmac.compare_digest(expected, given.encode("utf-8", "replace")) else None
