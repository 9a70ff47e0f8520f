"""Typed keys for everything the API application holds."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from relay.api.auth import Authenticator, Principal
from relay.api.backpressure import Backpressure
from relay.api.throttle import RateLimiter
from relay.domain.crypto import SecretBox
from relay.http.ssrf import CallbackPolicy
from relay.settings import Settings
from relay.store import Store


@dataclass(slots=True)
class Lifecycle:
    """Whether the API is draining (stopping): /readyz then fails so traffic moves away."""

    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
STORE = web.AppKey("store", Store)
POLICY = web.AppKey("policy", CallbackPolicy)
AUTH = web.AppKey("auth", Authenticator)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
BACKPRESSURE = web.AppKey("backpressure", Backpressure)
PRINCIPAL = web.RequestKey("principal", Principal)  # set by the auth middleware
READING_BODY = web.RequestKey("reading_body", bool)  # set while the body is read
