"""API keys: held as SHA-256 digests, compared in constant time, mapped to tenants."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from relay.settings import ApiKey

_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant, and a non-secret id of the key (for rate limits, logs)."""

    tenant: str
    key_id: str


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` against RELAY_API_KEYS."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._entries = [
            (hashlib.sha256(k.key.encode()).digest(), Principal(k.tenant, _key_id(k.key)))
            for k in keys
        ]
        self._by_id = {principal.key_id: principal for _, principal in self._entries}

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal for an Authorization header value, or None."""
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip(" \t")
        if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
            return None  # keys are printable ASCII without spaces (settings enforce it)
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for stored, principal in self._entries:  # no early exit: same time for every key
            if hmac.compare_digest(stored, digest):
                found = principal
        return found

    def by_key_id(self, key_id: str) -> Principal | None:
        """The principal of a key still in RELAY_API_KEYS, by the key's id (a dashboard
        session holds the id, never the key)."""
        return self._by_id.get(key_id)


def _key_id(key: str) -> str:
    return hashlib.sha256(b"key-id:" + key.encode()).hexdigest()[:12]
