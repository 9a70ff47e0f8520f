"""The user info of a callback URL (``https://user:pass@host/``, ``https://TOKEN@host/``): a
credential, sent as Basic authorization.

It is shown as ``user:***`` (a password) or ``***`` (a user name alone, or with an empty
password: a token, as in ``https://sk_live_...:@host/``) by the API, the CLI and the
dashboard. With RELAY_SECRETS_KEY it is also stored apart from the URL, sealed like the
webhook secrets (:meth:`relay.domain.crypto.SecretBox.seal`), all of it -- a user name may
be the token (``https://ghp_...:x-oauth-basic@host/``) --: the stored URL has ``***`` in its
place, and the user info is put back only to send (:func:`restore`)."""

from __future__ import annotations

from collections.abc import Callable

_DROPPED = {9: None, 10: None, 13: None}  # tab, LF, CR: URL parsers drop them


def _span(url: str) -> tuple[int, int] | None:
    """Where the user info of *url* is (start, end: before its ``@``), if it has one."""
    start = url.find("://") + 3
    if start < 3:
        return None
    end = len(url)
    for mark in "/?#":
        at = url.find(mark, start)
        if at != -1:
            end = min(end, at)
    at = url.rfind("@", start, end)
    return (start, at) if at != -1 else None


def _shown(userinfo: str) -> str:
    user, _, password = userinfo.partition(":")
    return f"{user}:***" if password else "***"


def shown(url: str) -> str:
    """*url* with its password, or its user name when it has no password, as ``***``. (Tabs
    and newlines are dropped first: none hides a credential.)"""
    url = url.translate(_DROPPED)
    span = _span(url)
    if span is None:
        return url
    start, end = span
    return f"{url[:start]}{_shown(url[start:end])}{url[end:]}"


def hide(url: str) -> tuple[str, str]:
    """(*url* with ``***`` for its whole user info, that user info as registered), or
    (*url*, "") when it has none to hide (none, or an empty one: ``http://@host/``)."""
    span = _span(url)
    if span is None or span[0] == span[1]:
        return url, ""
    start, end = span
    return f"{url[:start]}***{url[end:]}", url[start:end]


def seal_apart(url: str, seal: Callable[[str], str]) -> tuple[str, str]:
    """*url* as it is stored when RELAY_SECRETS_KEY is set: (the URL with ``***`` for its
    user info, that user info sealed by *seal* -- :meth:`relay.domain.crypto.SecretBox.seal`
    -- or '' when it has none). At registration, and when a key rotation seals a credential
    stored before any key was set."""
    stored, plain = hide(url)
    return stored, seal(plain) if plain else ""


def restore(stored: str, userinfo: str) -> str:
    """The URL :func:`hide` took *userinfo* out of (*stored*: its shown form)."""
    span = _span(stored)
    if span is None or not userinfo:
        return stored
    start, end = span
    return f"{stored[:start]}{userinfo}{stored[end:]}"


def for_sending(stored: str, sealed: str, open_sealed: Callable[[str], str]) -> str:
    """The URL to send to: *stored* with the user info *sealed* apart put back (opened by
    *open_sealed*: :meth:`relay.domain.crypto.SecretBox.open`), or *stored* itself when
    nothing was sealed apart."""
    return restore(stored, open_sealed(sealed)) if sealed else stored
