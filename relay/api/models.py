"""The API's request and response models. They validate requests and they generate the
OpenAPI document (:mod:`relay.api.openapi`), so the two can never disagree."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator

from relay.constants import MAX_CALLBACK_URL, MAX_METADATA_BYTES, VIDEO_ID_PATTERN
from relay.domain.signing import is_valid_secret

Score = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]
MAX_METADATA_DEPTH = 8


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        return 1 << 30
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


class WatchCreate(_Model):
    """Body of ``POST /v1/watches``."""

    video_id: str = Field(alias="videoId", pattern=VIDEO_ID_PATTERN, strict=True)
    callback_url: str = Field(
        alias="callbackUrl",
        min_length=1,
        max_length=MAX_CALLBACK_URL,
        # (the document's only: the relay's own check names what is wrong with a URL)
        json_schema_extra={"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]"},
    )
    min_score: Score = Field(0.0, alias="minScore")
    max_score: Score | None = Field(None, alias="maxScore")
    favorited_only: StrictBool = Field(False, alias="favoritedOnly")
    sort_by: Literal["score", "duration"] = Field("score", alias="sortBy")
    sort_order: Literal["asc", "desc"] = Field("desc", alias="sortOrder")
    metadata: dict[str, Any] | None = Field(
        None, description=f"Echoed in every event; at most {MAX_METADATA_BYTES} bytes as JSON."
    )
    secret: str | None = Field(
        None,
        description="whsec_ + base64 of 24-64 bytes; generated when absent.",
        pattern=r"^whsec_[A-Za-z0-9+/=]+$",
        max_length=128,
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if _depth(value, MAX_METADATA_DEPTH) > MAX_METADATA_DEPTH:
            raise ValueError(f"must be nested at most {MAX_METADATA_DEPTH} levels deep")
        try:
            size = len(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError) as exc:
            reason = "integers must fit in 64 bits" if "Integer" in str(exc) else str(exc)
            raise ValueError(f"cannot be stored: {reason}") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON, not {size}")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_form(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_secret(value):
            raise ValueError("must be whsec_ followed by the base64 of 24 to 64 bytes")
        return value

    @field_validator("max_score")
    @classmethod
    def _score_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min_score")
        if value is not None and isinstance(low, float | int) and value < low:
            raise ValueError("must be greater than or equal to minScore")
        return value


WatchStatusName = Literal["watching", "delivering", "delivered", "failed", "disabled", "cancelled"]
EventTypeName = Literal["clips.ready", "video.failed", "watch.expired"]


class WatchOut(_Model):
    """A watch as the API shows it."""

    id: str = Field(examples=["wat_qk3lcm5nrpxq7r4s6t7ueveg"])
    video_id: str = Field(alias="videoId")
    callback_url: str = Field(
        alias="callbackUrl",
        description=(
            "as registered, but its credentials masked: a password is shown as ***, and a"
            " user name alone or with an empty password (a token, as in https://TOKEN@host/)"
            " as ***; with RELAY_SECRETS_KEY, all of the user info as ***"
        ),
    )
    min_score: float = Field(alias="minScore")
    max_score: float | None = Field(alias="maxScore")
    favorited_only: bool = Field(alias="favoritedOnly")
    sort_by: Literal["score", "duration"] = Field(alias="sortBy")
    sort_order: Literal["asc", "desc"] = Field(alias="sortOrder")
    metadata: dict[str, Any]
    status: WatchStatusName
    video_status: str | None = Field(alias="videoStatus")
    video_progress: float | None = Field(alias="videoProgress")
    last_event_type: EventTypeName | None = Field(alias="lastEventType")
    created_at: str = Field(alias="createdAt")
    updated_at: str = Field(alias="updatedAt")
    delivered_at: str | None = Field(alias="deliveredAt")
    last_error: str | None = Field(
        alias="lastError",
        description="Why its last attempt failed; while it waits on its video, why the"
        " video's polls fail (e.g. the upstream refusing the relay's key), until one works.",
    )


class WatchCreated(WatchOut):
    """A new watch: the only response that carries its secret."""

    secret: str


class SecretOut(_Model):
    """Response of ``POST /v1/watches/{id}/rotate-secret``."""

    secret: str
    previous_secret_expires_at: str | None = Field(alias="previousSecretExpiresAt")


class WatchList(_Model):
    """A page of watches, newest first."""

    data: list[WatchOut]
    next_cursor: str | None = Field(
        alias="nextCursor",
        description="More may follow: ask again with it as cursor until it is null. A page"
        " filtered by a status (but a final status alone) may hold fewer than limit"
        " watches, or none, and still have one: an empty page is not the end.",
    )


class DeliveryOut(_Model):
    """One delivery attempt."""

    event_id: str = Field(alias="eventId")
    # (a delivery's record may be a watch.ping's: GET .../deliveries lists pings too)
    event_type: EventTypeName | Literal["watch.ping"] = Field(alias="eventType")
    attempt: int
    at: str
    status_code: int | None = Field(alias="statusCode")
    error: str | None
    latency_ms: float | None = Field(alias="latencyMs")
    response_body: str | None = Field(None, alias="responseBody")


class DeliveryList(_Model):
    """Every attempt of a watch, oldest first."""

    data: list[DeliveryOut]


class FieldError(_Model):
    """One invalid field of a request (a body field, a query parameter, or a header)."""

    field: str
    message: str


class Problem(_Model):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Health(_Model):
    """Health and readiness answers."""

    status: Literal["ok", "unavailable", "draining"]
