"""The scale scenario's table of figures per configuration (``bench/scale.py`` runs it)."""

from __future__ import annotations

import math
from typing import Any

from scale import ScaleRun


def _num(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:,.{digits}f}"


def _recorders(run: ScaleRun) -> float:
    return (
        sum(v for k, v in run.cores.items() if k.startswith("recorder")) if run.cores else math.nan
    )


def render(runs: list[ScaleRun]) -> str:
    """Every configuration side by side, then each one's top commands and slow log (a
    script's usec includes the commands it ran, which also count on their own)."""
    rows: list[tuple[str, ...]] = [("scale (per configuration)", *(r.label for r in runs))]
    lines: list[tuple[str, Any]] = [
        ("deliveries/s", lambda r: _num(r.rate, 0)),
        ("window s (switch -> last 2xx)", lambda r: _num(r.window_s, 1)),
        ("switch -> first 2xx s", lambda r: _num(r.first_2xx_s, 2)),
        ("Redis CPU us/delivery", lambda r: _num(r.redis_cpu_us, 1)),
        ("Redis cores (window)", lambda r: _num(r.redis_cores, 2)),
        ("Redis commands/delivery", lambda r: _num(r.redis_cmds, 1)),
        ("Redis commands > 1 ms", lambda r: str(r.slow_count)),
        ("slowest command ms", lambda r: _num(r.slow_max_ms, 1)),
        ("Redis forks (BGSAVE/AOF rewrite)", lambda r: str(r.forks)),
        ("their CPU us/delivery (not above)", lambda r: _num(r.redis_child_cpu_us, 1)),
        ("worker CPU us/delivery", lambda r: _num(r.worker_cpu_us, 0)),
        ("worker CPU s (total)", lambda r: _num(r.worker_cpu_s, 1)),
        ("worker CPU s (each)", lambda r: "/".join(f"{c:.1f}" for c in r.worker_cpu_s_each)),
        ("API cores (window)", lambda r: _num(r.cores.get("api", math.nan), 2)),
        ("recorders cores (window)", lambda r: _num(_recorders(r), 2)),
        ("other cores (not the bench)", lambda r: _num(r.cores.get("other", math.nan), 2)),
        ("Redis B/watch registered", lambda r: _num(r.bytes_registered, 0)),
        ("Redis B/watch with event", lambda r: _num(r.bytes_with_event, 0)),
        ("API GET p99 ms rest", lambda r: _num(r.get_p99_rest_ms, 1)),
        ("API GET p99 ms fan-out", lambda r: _num(r.get_p99_fanout_ms, 1)),
        ("API GET p99 ratio", lambda r: _num(r.get_ratio, 2)),
        ("registrations/s (c=64)", lambda r: _num(r.register_rps, 0)),
        ("duplicates / missing", lambda r: f"{r.duplicates} / {r.missing}"),
    ]
    for name, get in lines:
        rows.append((name, *(get(r) for r in runs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    for r in runs:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in r.top_calls)
        usec = ", ".join(f"{k} {v:.2f}" for k, v in r.top_usec)
        out.append(f"{r.label} top commands per delivery, by calls: {calls}")
        out.append(f"{r.label} top commands per delivery, by usec (scripts incl.): {usec}")
        if r.slow_by_cmd:
            slow = ", ".join(
                f"{k} x{int(v['count'])} (median {v['median_ms']:.1f}, max {v['max_ms']:.1f} ms)"
                for k, v in r.slow_by_cmd.items()
            )
            out.append(f"{r.label} commands > 1 ms: {slow}")
    return "\n".join(out)
