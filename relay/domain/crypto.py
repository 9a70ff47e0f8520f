"""Webhook secrets and callback URL credentials at rest: sealed with Fernet when
RELAY_SECRETS_KEY is set, plain otherwise."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

SEALED_PREFIX = "enc:"


def check_key(raw: str) -> None:
    """Raise ValueError unless *raw* is a Fernet key (url-safe base64 of 32 bytes)."""
    try:
        Fernet(raw.encode())
    except (ValueError, TypeError):
        raise ValueError(
            "expected a Fernet key: url-safe base64 of 32 bytes "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())')"
        ) from None


class SecretBox:
    """Seals and opens secrets stored in Redis. Plain values stay readable after a key is set."""

    def __init__(self, key: str = "") -> None:
        self._fernet = Fernet(key.encode()) if key else None

    @property
    def sealing(self) -> bool:
        """A key is set: what is sealed is encrypted."""
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        """Return the form of *secret* to store."""
        if self._fernet is None:
            return secret
        return SEALED_PREFIX + self._fernet.encrypt(secret.encode()).decode()

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
