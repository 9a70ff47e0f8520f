"""The operator's commands that work on the relay's Redis itself (``REDIS_URL``), not through
the API, because what they change is no one tenant's: ``clip-relay upstream`` (the
upstream's 429 pause, :mod:`relay.admin.upstream`) and ``clip-relay secrets`` (rotating
RELAY_SECRETS_KEY, :mod:`relay.admin.secrets`); :mod:`relay.admin.running` runs either and
says why Redis failed it."""
