"""clip-relay's Python client: the registration API (:class:`Client`, :class:`AsyncClient`)
and webhook verification (:func:`verify`). Depends on httpx and the standard library only."""

from __future__ import annotations

from clip_relay_client._core import MAX_PAGE, shown_url
from clip_relay_client._errors import (
    ApiError,
    ClipRelayError,
    ConnectionFailed,
    WebhookVerificationError,
)
from clip_relay_client.client import AsyncClient, Client
from clip_relay_client.models import Delivery, SecretRotation, Watch, WatchPage, WatchStatus
from clip_relay_client.webhooks import TOLERANCE, Event, EventType, Headers, verify

__version__ = "0.1.0"
__all__ = [
    "MAX_PAGE",
    "TOLERANCE",
    "ApiError",
    "AsyncClient",
    "Client",
    "ClipRelayError",
    "ConnectionFailed",
    "Delivery",
    "Event",
    "EventType",
    "Headers",
    "SecretRotation",
    "Watch",
    "WatchPage",
    "WatchStatus",
    "WebhookVerificationError",
    "__version__",
    "shown_url",
    "verify",
]
