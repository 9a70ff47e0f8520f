"""The deliverer's logger: one name for the lines of every stage (claim, send, settle)."""

from __future__ import annotations

from relay import logs

LOG_NAME = "workers.deliverer"  # the name operators know, from before the stages were split
log = logs.get(LOG_NAME)
