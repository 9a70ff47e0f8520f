"""The errors the client raises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import httpx


class ClipRelayError(Exception):
    """Base class of every error this package raises."""


class ApiError(ClipRelayError):
    """The API answered with an error: its problem document (RFC 9457).

    ``status`` and ``title`` always; ``detail``, ``type`` and, for validation errors, ``errors``
    (``[{"field": ..., "message": ...}]``) when the API gave them; ``problem`` is the whole
    document as sent; ``request_id`` the answer's ``X-Request-Id`` (the relay's logs name
    the request by it: quote it in a support ticket). Pickles and copies whole (a process
    pool's worker hands it back).
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
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.request_id = request_id
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

    def __reduce__(self) -> tuple[Any, ...]:
        # (an exception pickles as its class and args: these are the message alone, which
        # __init__ does not take)
        fields: dict[str, Any] = {
            "type": self.type,
            "errors": self.errors,
            "problem": self.problem,
            "retry_after": self.retry_after,
            "request_id": self.request_id,
        }
        return (partial(type(self), **fields), (self.status, self.title, self.detail))


class ConnectionFailed(ClipRelayError, httpx.TransportError):
    """The API could not be reached, or did not answer within the client's *timeout*, on
    the last of the tries allowed; the transport's own error (an ``httpx`` one) is
    ``__cause__``. Also an ``httpx.TransportError``, as the client raised before."""


class WebhookVerificationError(ClipRelayError):
    """A webhook failed verification: a header is missing or malformed, its timestamp is out
    of tolerance, no signature matches the secret, or its body is not a JSON event."""
