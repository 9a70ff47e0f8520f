"""Names and fixed values shared by the API and the worker: one place for all of them."""

from __future__ import annotations

from typing import Final

# --- Redis key layout (every key the relay writes starts with PREFIX) ---------------------
PREFIX: Final = "cr:"
WATCH_PREFIX: Final = PREFIX + "w:"
WATCH_KEY: Final = WATCH_PREFIX + "{}"  # hash: a watch's state, secrets and attempt records
REGISTRATION_SUFFIX: Final = ":r"
REGISTRATION_KEY: Final = WATCH_KEY + REGISTRATION_SUFFIX  # string: a watch's registration (JSON)
VIDEO_PREFIX: Final = PREFIX + "v:"
VIDEO_KEY: Final = VIDEO_PREFIX + "{}"  # hash: poll state of one upstream video
VIDEO_WATCHES_SUFFIX: Final = ":waiting"
VIDEO_WATCHES_KEY: Final = VIDEO_KEY + VIDEO_WATCHES_SUFFIX  # hash: waiting watch -> tenant
SOURCE_PREFIX: Final = PREFIX + "src:"
SOURCE_KEY: Final = SOURCE_PREFIX + "{}:{}"  # hash: the clips of a video's fan-out at a time
TENANTS_KEY: Final = PREFIX + "tenants"  # set: every tenant that registered a watch
TENANT_INDEX_KEY: Final = PREFIX + "t:{}:w"  # zset: a tenant's watches by creation time
TENANT_VIDEO_INDEX_KEY: Final = PREFIX + "t:{}:v:{}:w"  # zset: a tenant's watches of a video
TENANT_PREFIX: Final = PREFIX + "t:"
TENANT_FINAL_KEY: Final = TENANT_PREFIX + "{}:s:{}"  # zset: a tenant's watches in a final status
TENANT_COUNTS_KEY: Final = TENANT_PREFIX + "{}:n"  # hash: a tenant's watches per status
# hash: a tenant's delivery attempts in one minute (minutes since the epoch): ok, fail
TENANT_MINUTE_KEY: Final = TENANT_PREFIX + "{}:m:{}"
UI_LOGIN_KEY: Final = PREFIX + "ui:login:{}:{}"  # string: sign-ins from one address in a minute
UI_ENDED_KEY: Final = PREFIX + "ui:ended:{}"  # string: a signed-out dashboard session's id
IDEMPOTENCY_KEY: Final = PREFIX + "idem:{}:{}"  # string: tenant + Idempotency-Key -> watch
POLL_SCHEDULE_KEY: Final = PREFIX + "sched:poll"  # zset: video id -> next poll (ms)
DELIVERY_SCHEDULE_KEY: Final = PREFIX + "sched:delivery"  # zset: watch id -> next attempt (ms)
EXPIRY_SCHEDULE_KEY: Final = PREFIX + "sched:expiry"  # zset: watching watch id -> expiry (ms)
UPSTREAM_RATE_KEY: Final = PREFIX + "up:rate:{}"  # string: requests granted in one second
# the last ms of each second, whose upstream requests may reach the upstream in the next one:
# they are charged to both seconds' budgets, and tokens granted earlier are not spent in them
# (a CI run saw 21 requests in one of the upstream's seconds with a cap of 20, the 21st sent
# at ~999 ms)
UPSTREAM_SEND_MARGIN_MS: Final = 100
UPSTREAM_PAUSE_KEY: Final = PREFIX + "up:pause"  # string: upstream paused until (ms)
# string: the end (ms) of a pause an operator's resume ended, while the resume still has
# put-off polls to move (it lapses by itself after that end)
UPSTREAM_RESUMING_KEY: Final = PREFIX + "up:resuming"
# hash: a RELAY_LEASE in use (ms) -> Redis ms until which a worker holding it was last seen
# to (every few seconds, for 10 minutes): how far a claim may reach, for `upstream resume`
WORKER_LEASES_KEY: Final = PREFIX + "workers:leases"
WORKER_LEASE_SEEN_MS: Final = 600_000
# hash: the RELAY_SECRETS_KEY fingerprints a running API or worker holds (newest first,
# comma-joined; "none": no key) -> Redis ms until which one holding them was seen (each says
# its own every few seconds, a minute ahead): `secrets reseal` seals only with a key every
# process seen can open. Words older than KEYS_SEEN_KEPT_MS are deleted by the next reader,
# and the key lapses that long after the last write.
KEYS_SEEN_KEY: Final = PREFIX + "keys:seen"
KEYS_SEEN_MS: Final = 60_000
KEYS_SEEN_KEPT_MS: Final = 600_000
UPSTREAM_PAUSE_CHANNEL: Final = PREFIX + "up:paused"  # pub/sub: each new pause's length (ms)
CIRCUIT_CLOSE_CHANNEL: Final = PREFIX + "circuits:close"  # pub/sub: origin tag (or *) to close
CIRCUIT_CLOSES_KEY: Final = PREFIX + "circuits:closed"  # zset: origin tag (or *) -> last close ms
WATCH_COUNTS_KEY: Final = PREFIX + "stats:watches"  # hash: status -> number of watches
# hash: API key id -> its requests admitted in one second, ?+id -> all its requests then
RATE_LIMIT_KEY: Final = PREFIX + "rl:{}"
SWEEP_LOCK_KEY: Final = PREFIX + "sweep:lock"  # string: the retention sweep's lock (lapses)
ARQ_QUEUE: Final = PREFIX + "arq:queue"
ARQ_HEALTH_KEY: Final = PREFIX + "arq:health"

# --- watch lifecycle ----------------------------------------------------------------------
WATCH_STATUSES: Final[tuple[str, ...]] = (
    "watching",
    "delivering",
    "delivered",
    "failed",
    "disabled",
    "cancelled",
)
# the final ones, each with a per-tenant index by the time a watch took it (TENANT_FINAL_KEY)
FINAL_STATUSES: Final[tuple[str, ...]] = ("delivered", "failed", "disabled", "cancelled")
# the statuses a redeliver starts a new series from (redeliver.lua answers the others)
REDELIVERABLE_STATUSES: Final = frozenset({"delivered", "failed", "disabled"})
EVENT_TYPES: Final[tuple[str, ...]] = ("clips.ready", "video.failed", "watch.expired")

# --- upstream vocabulary (UPSTREAM.md) ----------------------------------------------------
VIDEO_FINAL_OK: Final = frozenset({"completed"})
# submitted without a clipping config: it does not move on its own (UPSTREAM.md), so it is
# polled once a minute at most (its owner may configure it), not every RELAY_POLL_INTERVAL
VIDEO_UNCONFIGURED: Final = "pending_config"
UNCONFIGURED_POLL_S: Final = 60.0
VIDEO_FINAL_BAD: Final = frozenset({"failed", "error", "expired"})
CLIP_DELIVERABLE: Final = frozenset({"completed", "ready", "exported"})
NOT_FOUND_STATUS: Final = "not_found"
NOT_FOUND_POLLS: Final = 3  # 404s in a row before a video counts as unknown

# --- fixed limits ---------------------------------------------------------------------------
MAX_BODY_BYTES: Final = 64 * 1024
# an Idempotency-Key: 1-255 characters, no control characters (documented in the OpenAPI)
MAX_IDEMPOTENCY_KEY: Final = 255
IDEMPOTENCY_KEY_PATTERN: Final = rf"^[^\x00-\x1f\x7f]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
# a videoId (SPEC): 1-128 of A-Z a-z 0-9 _ - (the model, the list filter and the OpenAPI)
VIDEO_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,128}$"
MAX_METADATA_BYTES: Final = 4 * 1024
# a tenant may hold this many times RELAY_TENANT_MAX_WATCHES watches in all, final ones
# too (kept for RELAY_RETENTION): one tenant registering and cancelling at its rate limit
# for a week would otherwise fill Redis for every tenant (an operator's review)
STORED_PER_LIVE: Final = 10
MAX_CALLBACK_URL: Final = 2048
MAX_ATTEMPTS_KEPT: Final = 200  # attempt records kept per watch
RESPONSE_BODY_KEPT: Final = 1024  # bytes of a receiver's answer kept per attempt
IDEMPOTENCY_TTL: Final = 24 * 3600
ATTEMPT_MINUTES_TTL: Final = 2 * 3600 + 120  # seconds a per-minute attempt count is kept
RETRY_AFTER_CAP: Final = 3600.0
UPSTREAM_BACKOFF_CAP: Final = 300.0  # seconds: longest gap between polls of a failing video
AUTH_ERROR_LOG_EVERY: Final = 3600.0  # seconds: 401/402/403 logged once per video per hour
TROUBLE_LOG_EVERY_S: Final = 10.0  # seconds: one upstream trouble line of a kind (per video)
JITTER: Final = 0.2  # +-20 % on retry delays
REQUEST_DEADLINE: Final = 5.0  # seconds: an API request that needs longer (Redis hung) is a 503
PROBE_REDIS_S: Final = 1.0  # /readyz and /metrics wait this long for Redis at most (a hung one)
