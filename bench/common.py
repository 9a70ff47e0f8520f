"""Shared pieces of the benchmark: statistics, figures, the results table, small helpers.

A *figure* is one measured quantity with one sample per repetition; the table shows its
median with the min-max beside it, the baseline measured in the same run, their ratio and
the issue's target. Timing targets are reported, never asserted: only correctness checks
make ``bench/run.py`` exit non-zero.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values*, linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(slots=True)
class Summary:
    """Median and range of the per-run samples of one quantity."""

    median: float
    lo: float
    hi: float
    runs: list[float]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        """Summarise *samples* (NaN when there are none)."""
        clean = [s for s in samples if not math.isnan(s)]
        if not clean:
            return cls(math.nan, math.nan, math.nan, list(samples))
        return cls(statistics.median(clean), min(clean), max(clean), list(samples))

    def to_json(self, unit: str) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return {
            "median": _round(self.median),
            "min": _round(self.lo),
            "max": _round(self.hi),
            "runs": [_round(r) for r in self.runs],
            "unit": unit,
        }


def _round(x: float) -> float | None:
    if math.isnan(x):
        return None
    return round(x, 4 if abs(x) < 10 else 1)


@dataclass(slots=True)
class Figure:
    """One row of the results table.

    ``samples`` has one value per run. ``baseline`` (same run, same receiver, concurrency
    and body size) is optional; when given, ``ratios`` are the per-run quotients
    ``sample / baseline``. ``check`` decides whether the target is met from the median
    (of the ratio when ``target_on_ratio``), or from every sample when ``check_all``.
    """

    key: str
    label: str
    unit: str
    samples: list[float]
    target: str
    check: Callable[[float], bool] | None = None
    baseline: list[float] | None = None
    baseline_label: str = ""
    target_on_ratio: bool = False
    note: str = ""
    check_all: bool = False  # the target holds for every sample, not only the median

    @property
    def summary(self) -> Summary:
        """Median and range of the samples."""
        return Summary.of(self.samples)

    @property
    def ratio(self) -> Summary | None:
        """Median and range of the per-run ratios to the baseline."""
        if not self.baseline:
            return None
        pairs = zip(self.samples, self.baseline, strict=False)
        return Summary.of([s / b if b else math.nan for s, b in pairs])

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target to check)."""
        if self.check is None:
            return None
        if self.check_all:
            chosen = self.ratio if self.target_on_ratio and self.ratio else self.summary
            values = chosen.runs
            return bool(values) and all(not math.isnan(v) and self.check(v) for v in values)
        value = self.ratio.median if self.target_on_ratio and self.ratio else self.summary.median
        return False if math.isnan(value) else self.check(value)


@dataclass(slots=True)
class Checks:
    """Correctness checks: each failure is kept with its reason; any failure fails the run."""

    failures: list[str] = field(default_factory=list)
    passed: int = 0

    def expect(self, ok: bool, what: str) -> bool:
        """Record one check; *what* describes the failure."""
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok


def fmt(x: float, unit: str = "") -> str:
    """A compact human number."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit == "ratio":
        return f"{x:.2f}x"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}"


def render_table(figures: Iterable[Figure]) -> str:
    """The results table: figure, median, min-max, baseline, ratio, target, met?"""
    header = ("figure", "median", "min-max", "baseline", "ratio", "target", "met?")
    rows: list[tuple[str, ...]] = [header]
    for f in figures:
        s = f.summary
        base = Summary.of(f.baseline) if f.baseline else None
        ratio = f.ratio
        met = f.met
        rows.append(
            (
                f"{f.label} [{f.unit}]",
                fmt(s.median),
                f"{fmt(s.lo)}-{fmt(s.hi)}",
                f"{fmt(base.median)} ({f.baseline_label})" if base else "-",
                f"{fmt(ratio.median, 'ratio')} ({fmt(ratio.lo, 'ratio')}-{fmt(ratio.hi, 'ratio')})"
                if ratio
                else "-",
                f.target,
                "-" if met is None else ("yes" if met else "NO"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_json(figures: Iterable[Figure]) -> dict[str, Any]:
    """One key per figure (median, min, max, runs, unit), one per ratio and per baseline."""
    out: dict[str, Any] = {}
    for f in figures:
        entry = f.summary.to_json(f.unit)
        entry["target"] = f.target
        entry["met"] = f.met
        if f.note:
            entry["note"] = f.note
        out[f.key] = entry
        if f.baseline:
            out[f"{f.key}__baseline"] = Summary.of(f.baseline).to_json(f.unit) | {
                "what": f.baseline_label
            }
            ratio = f.ratio
            if ratio is not None:
                out[f"{f.key}__ratio"] = ratio.to_json("ratio")
    return out


class CpuMeter:
    """CPU seconds and peak RSS of one process between :meth:`start` and :meth:`read`."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._cpu0 = 0.0
        self.peak_rss = 0

    def cpu(self) -> float:
        """User + system CPU seconds of the process so far."""
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        """Start counting."""
        self._cpu0 = self.cpu()
        self.peak_rss = self.rss()

    def rss(self) -> int:
        """Resident set size now (bytes)."""
        return int(self.proc.memory_info().rss)

    def sample(self) -> None:
        """Update the peak RSS."""
        self.peak_rss = max(self.peak_rss, self.rss())

    def used(self) -> float:
        """CPU seconds since :meth:`start`."""
        return self.cpu() - self._cpu0


def _busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


class CpuSet:
    """CPU seconds of several named processes over one interval (cores = CPU s / wall s).

    Also counts the harness itself and ``other``: what the rest of the machine used
    meanwhile (other people's tests, say), which makes a window's figures less reliable.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.meters = {name: CpuMeter(pid) for name, pid in pids.items()}
        self.meters["harness"] = CpuMeter(os.getpid())
        self._t0 = 0.0
        self._busy0 = 0.0

    def start(self) -> None:
        """Start counting."""
        self._t0 = time.monotonic()
        self._busy0 = _busy()
        for m in self.meters.values():
            m.start()

    def cores(self) -> dict[str, float]:
        """Cores used by each process since :meth:`start`, and by all ``other`` processes."""
        wall = max(time.monotonic() - self._t0, 1e-9)
        out = {name: m.used() / wall for name, m in self.meters.items()}
        out["other"] = max((_busy() - self._busy0) / wall - sum(out.values()), 0.0)
        return {name: round(v, 3) for name, v in out.items()}


class Profiler:
    """Optional py-spy recordings (collapsed stacks) of processes during measured windows."""

    def __init__(self, out: Path | None, rate: int = 200) -> None:
        self.out = out
        self.rate = rate  # samples per second
        self._running: list[subprocess.Popen[bytes]] = []

    @contextlib.contextmanager
    def window(self, label: str, pids: dict[str, int]) -> Iterator[None]:
        """Record each of *pids* (name -> pid) while the block runs."""
        self.start(label, pids)
        try:
            yield
        finally:
            self.stop()

    def start(self, label: str, pids: dict[str, int]) -> None:
        """Record each of *pids* (name -> pid) until :meth:`stop`."""
        if self.out is None or shutil.which("py-spy") is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            target = self.out / f"{label}-{name}.folded"
            args = ["record", "--pid", str(pid), "-o", str(target), "--rate", str(self.rate)]
            self._running.append(
                subprocess.Popen(
                    ["py-spy", *args, "--format", "raw"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop(self) -> None:
        """Stop the recordings (py-spy writes its file on SIGINT)."""
        for proc in self._running:
            proc.send_signal(signal.SIGINT)
        for proc in self._running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._running.clear()


PROFILER = Profiler(None)
"""The run's profiler; ``run.py --profile DIR`` sets its ``out``."""
