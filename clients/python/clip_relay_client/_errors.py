"""The errors the client raises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx


class ClipRelayError(Exception):
    """Base class of every error this package raises."""


class ApiError(ClipRelayError):
    """The API answered with an error: its problem document (RFC 9457).

    ``status`` and ``title`` always; ``detail``, ``type`` and, for validation errors, ``errors``
    (``[{"field": ..., "message": ...}]``) when the API gave them; ``problem`` is the whole
    document as sent.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type: str | None = None,  # the problem document's own name
        errors: Sequence[Mapping[str, Any]] = (),
        problem: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors]
        self.problem: dict[str, Any] = dict(problem or {})
        self.retry_after = retry_after
        text = f"{status} {title}"
        if detail:
            text += f": {detail}"
        for e in self.errors:
            said = f"{e.get('field')}: {e.get('message')}"
            if said != detail:  # (the relay's detail is its first field error: once)
                text += f" [{said}]"
        super().__init__(text)


class ConnectionFailed(ClipRelayError, httpx.TransportError):
    """The API could not be reached, or did not answer within the client's *timeout*, on
    the last of the tries allowed; the transport's own error (an ``httpx`` one) is
    ``__cause__``. Also an ``httpx.TransportError``, as the client raised before."""


class WebhookVerificationError(ClipRelayError):
    """A webhook failed verification: a header is missing or malformed, its timestamp is out
    of tolerance, no signature matches the secret, or its body is not a JSON event."""
