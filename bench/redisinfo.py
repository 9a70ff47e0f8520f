"""What the scale scenario reads of Redis and of the processes: CPU of a pid from ``/proc``,
``used_memory``, the stats window, forks, ``INFO commandstats`` and ``SLOWLOG`` with each
script's name (from the SHA1 of its ``commands/*.lua``)."""

from __future__ import annotations

import functools
import hashlib
import os

from stack import ROOT, Stack

CLK_TCK = os.sysconf("SC_CLK_TCK")
SLOW_US = 1000  # SLOWLOG threshold: 1 ms
SLOWLOG_LEN = 10_000


def proc_cpu(pid: int, children: bool = False) -> float:
    """utime + stime of *pid* so far, seconds (``/proc/<pid>/stat`` fields 14 and 15); with
    *children*, cutime + cstime instead (16 and 17: its children waited for, such as
    Redis's BGSAVE and AOF rewrite children)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()  # fields 3... (comm may hold spaces)
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


async def redis_memory(stack: Stack) -> tuple[int, int]:
    """``used_memory`` and ``used_memory_dataset`` (bytes)."""
    redis = stack.redis_client()
    try:
        info = await redis.info("memory")
    finally:
        await redis.aclose()
    return int(info["used_memory"]), int(info.get("used_memory_dataset", 0))


async def redis_reset_window(stack: Stack) -> None:
    """Zero the command counters and the slow log (the slow log set to > 1 ms)."""
    redis = stack.redis_client()
    try:
        await redis.config_set("slowlog-log-slower-than", SLOW_US)
        await redis.config_set("slowlog-max-len", SLOWLOG_LEN)
        await redis.slowlog_reset()
        await redis.config_resetstat()
    finally:
        await redis.aclose()


async def redis_forks(stack: Stack) -> int:
    """``total_forks`` (BGSAVE, AOF rewrites: the children's CPU is not the server's)."""
    redis = stack.redis_client()
    try:
        return int((await redis.info("stats")).get("total_forks", 0))
    finally:
        await redis.aclose()


async def redis_commandstats(stack: Stack) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec) since the last ``CONFIG RESETSTAT``."""
    redis = stack.redis_client()
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


@functools.cache
def script_names() -> dict[str, str]:
    """SHA1 -> name of every ``.lua`` file of the relay's source (the scripts it loads
    verbatim with EVALSHA); a script built otherwise keeps its SHA1 in the report."""
    out = {}
    for package in ("relay", "workers"):
        for path in sorted((ROOT / package).rglob("*.lua")):
            out[hashlib.sha1(path.read_bytes()).hexdigest()] = path.stem  # noqa: S324
    return out


def _slow_name(command: str) -> str:
    """The command's name; a script call also names its script (file name, else the SHA1
    prefix; a function's name)."""
    words = command.split()
    if not words:
        return "?"
    name = words[0].lower()
    if name in ("evalsha", "evalsha_ro") and len(words) > 1:
        return f"{name} {script_names().get(words[1].lower(), words[1][:12])}"
    if name in ("fcall", "fcall_ro") and len(words) > 1:
        return f"{name} {words[1]}"
    return name


async def redis_slowlog(stack: Stack, since: float) -> list[tuple[str, float]]:
    """Slow log entries (> 1 ms) started at or after *since* (Unix s): (name, ms)."""
    redis = stack.redis_client()
    try:
        entries = await redis.slowlog_get(SLOWLOG_LEN)
    finally:
        await redis.aclose()
    out = []
    for e in entries:
        command = e["command"]
        if isinstance(command, bytes):
            command = command.decode(errors="replace")
        if int(e["start_time"]) >= int(since) and int(e["duration"]) > SLOW_US:
            out.append((_slow_name(str(command)), int(e["duration"]) / 1000))
    return out


async def redis_slowlog_reset(stack: Stack) -> None:
    """``SLOWLOG RESET`` (its entries take memory too), with the threshold at 1 ms (so the
    registration's slow commands of the first configuration count as the others')."""
    redis = stack.redis_client()
    try:
        await redis.config_set("slowlog-log-slower-than", SLOW_US)
        await redis.config_set("slowlog-max-len", SLOWLOG_LEN)
        await redis.slowlog_reset()
    finally:
        await redis.aclose()


# --- the API probe -------------------------------------------------------------------------
