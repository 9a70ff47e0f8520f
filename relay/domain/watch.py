"""A watch: one registration of a callback for one video, and its signing secrets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.domain import userinfo


@dataclass(slots=True)
class SecretEntry:
    """One signing secret of a watch, sealed; ``expires_ms`` 0 means current."""

    sealed: str = field(repr=False)
    expires_ms: int = 0


@dataclass(slots=True)
class Watch:
    """A watch as stored. Field names follow the API's camelCase where they are exposed."""

    id: str
    tenant: str
    video_id: str
    callback_url: str = field(repr=False)  # (may carry a password or a token: never printed)
    min_score: float = 0.0
    max_score: float | None = None
    favorited_only: bool = False
    sort_by: str = "score"
    sort_order: str = "desc"
    metadata: dict[str, Any] = field(default_factory=dict)
    secrets: list[SecretEntry] = field(default_factory=list, repr=False)
    status: str = "watching"
    video_status: str | None = None
    video_progress: float | None = None
    video_error: str | None = None  # video.failed: why (part of its event)
    last_event_type: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    delivered_ms: int | None = None
    last_error: str | None = None
    event_id: str = ""
    event_type: str = ""
    attempt: int = 0  # the number of its last attempt (they are numbered on across series)
    attempt_base: int = 0  # the last attempt before the current series (redeliver, recover)
    records: int = 0  # attempt records written so far (they are numbered on)
    final_ms: int | None = None  # when its event was made: the event's timestamp
    clips_ms: int | None = None  # clips.ready: when the clips its body carries were fetched
    # the user info of callback_url, sealed, when RELAY_SECRETS_KEY was set at registration
    # (callback_url then shows it as ***: relay.domain.userinfo); "": the URL carries its own
    callback_auth: str = field(default="", repr=False)

    def callback_for_sending(self, open_sealed: Callable[[str], str]) -> str:
        """The callback URL to send to: with its user info put back if it was sealed apart
        (*open_sealed*: :meth:`relay.domain.crypto.SecretBox.open`)."""
        return userinfo.for_sending(self.callback_url, self.callback_auth, open_sealed)

    def signing_secrets(self, at_ms: int) -> list[SecretEntry]:
        """The secrets that sign at *at_ms*: the current one and any still in its grace."""
        return [s for s in self.secrets if s.expires_ms == 0 or s.expires_ms > at_ms]
