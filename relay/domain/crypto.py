"""Webhook secrets and callback URL credentials at rest: sealed with Fernet when
RELAY_SECRETS_KEY is set, plain otherwise.

RELAY_SECRETS_KEY may name several keys, comma-separated, newest first: the newest seals,
any of them opens (``cryptography``'s ``MultiFernet``). That is how the key is rotated: add
the new key behind the old, then put it in front, re-seal what is stored (``clip-relay
secrets reseal``, :mod:`relay.store.reseal`), then drop the old one. The word ``plain``
in front (``plain,NEW``) seals nothing and opens with the keys behind it: the first step
of setting a key where none was, so that every process can open what NEW will seal before
any seals with it.
"""

from __future__ import annotations

import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_PREFIX = "enc:"
PLAIN = "plain"  # first in RELAY_SECRETS_KEY: nothing is sealed; the keys behind it open
_HOW = (
    "expected a Fernet key: url-safe base64 of 32 bytes "
    "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')"
)


def split_keys(raw: str) -> list[str]:
    """The keys of a RELAY_SECRETS_KEY value, newest first ('' -> none); ValueError, naming
    the key by its position only, unless each is a Fernet key (url-safe base64 of 32
    bytes)."""
    if not raw:
        return []
    keys = [k.strip() for k in raw.split(",")]
    for n, key in enumerate(keys, 1):
        where = f"key {n} of {len(keys)}: " if len(keys) > 1 else ""
        if not key:
            raise ValueError(f"{where}empty (keys are separated by single commas)")
        if key == PLAIN:
            if n == 1 and len(keys) > 1:
                continue
            raise ValueError(
                f"{where}{PLAIN} goes first and before a key (plain,KEY: store plain, open"
                " what KEY seals)"
            )
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ValueError(where + _HOW) from None
        if key in keys[: n - 1]:  # (a typo, e.g. NEW,NEW for NEW,OLD: OLD's values lost)
            raise ValueError(f"{where}the same key as key {keys.index(key) + 1}")
    return keys


def held(raw: str) -> str:
    """What a process holds of RELAY_SECRETS_KEY *raw*, as it says so in Redis: the keys'
    fingerprints, newest first, comma-joined ("none" without a key; "plain" first as it is
    given)."""
    keys = split_keys(raw)
    return ",".join(k if k == PLAIN else fingerprint(k) for k in keys) if keys else "none"


def fingerprint(key: str) -> str:
    """A short name of *key* that gives nothing of it away (the first 12 hex digits of its
    SHA-256: ``printf %s "$KEY" | sha256sum | cut -c1-12``), for an operator to check which
    key a process seals with."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_key(raw: str) -> None:
    """Raise ValueError unless *raw* is one Fernet key or several, comma-separated."""
    split_keys(raw)


class SecretBox:
    """Seals and opens secrets stored in Redis. Plain values stay readable after a key is set."""

    def __init__(self, key: str = "") -> None:
        keys = split_keys(key)
        self._newest = Fernet(keys[0].encode()) if keys and keys[0] != PLAIN else None
        opening = [Fernet(k.encode()) for k in keys if k != PLAIN]
        self._fernet = MultiFernet(opening) if opening else None

    @property
    def sealing(self) -> bool:
        """A key seals: what is stored is encrypted (not without a key, nor with plain
        first)."""
        return self._newest is not None

    def seal(self, secret: str) -> str:
        """Return the form of *secret* to store (sealed with the newest key)."""
        if self._newest is None:
            return secret
        return SEALED_PREFIX + self._newest.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """Return the secret behind a stored value; ValueError if it cannot be opened."""
        if not stored.startswith(SEALED_PREFIX):
            return stored
        if self._fernet is None:
            raise ValueError(
                "a webhook secret or a callback URL's credential is encrypted but"
                " RELAY_SECRETS_KEY is not set"
            )
        try:
            return self._fernet.decrypt(stored[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ValueError(
                "a webhook secret or a callback URL's credential cannot be decrypted with"
                " RELAY_SECRETS_KEY"
            ) from None

    def current(self, stored: str) -> bool:
        """Is *stored* as :meth:`seal` would store it now: sealed with the newest key, or
        plain when no key is set? ('' is: nothing is stored.)"""
        sealed = stored.startswith(SEALED_PREFIX)
        if self._newest is None or not stored:
            return not sealed
        if not sealed:
            return False
        try:
            self._newest.decrypt(stored[len(SEALED_PREFIX) :].encode())
        except InvalidToken:
            return False
        return True

    def reseal(self, stored: str) -> str:
        """*stored* sealed with the newest key (a plain value sealed, when a key is set);
        ValueError, as :meth:`open`, when no key opens it."""
        return stored if not stored else self.seal(self.open(stored))
