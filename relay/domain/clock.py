"""The relay's clock: every stored time is integer milliseconds since the epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock time in integer milliseconds (the unit of every stored time)."""
    return int(time.time() * 1000)
