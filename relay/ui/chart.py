"""The overview's chart, drawn on the server: attempts per minute over the last hour as
stacked bars (successes below, failures above), laid out here and written as SVG by the
template. No script, no library: the numbers become rectangles."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.store.dashboard import Minute

WIDTH, HEIGHT = 720, 200  # the SVG's viewBox
LEFT, RIGHT, TOP, BOTTOM = 40, 8, 10, 24  # room for the axes' labels


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute: its successes' and failures' rectangles (y down, as SVG has it)."""

    x: float
    width: float
    ok_y: float
    ok_h: float
    fail_y: float
    fail_h: float
    label: str  # "14:05 UTC: 12 ok, 1 failed" (the bar's tooltip)


@dataclass(frozen=True, slots=True)
class Tick:
    """A label on an axis."""

    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template draws."""

    width: int
    height: int
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    plot_left: float
    plot_right: float
    plot_top: float
    plot_bottom: float
    ok: int  # totals over the hour
    fail: int


def nice_max(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k that is at least *value* (at least 5: an empty hour
    still has an axis)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= max(value, 4):
                return m * step
        step *= 10


def _clock(minute: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute * 60))


def layout(minutes: Sequence[Minute]) -> Chart:
    """The chart of *minutes* (oldest first)."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    top = nice_max(max((m.ok + m.fail for m in minutes), default=0))
    slot = plot_w / max(len(minutes), 1)
    base = TOP + plot_h
    bars: list[Bar] = []
    for i, m in enumerate(minutes):
        ok_h = plot_h * m.ok / top
        fail_h = plot_h * m.fail / top
        bars.append(
            Bar(
                x=round(LEFT + i * slot + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                ok_y=round(base - ok_h, 2),
                ok_h=round(ok_h, 2),
                fail_y=round(base - ok_h - fail_h, 2),
                fail_h=round(fail_h, 2),
                label=f"{_clock(m.minute)} UTC: {m.ok} ok, {m.fail} failed",
            )
        )
    y_ticks = [
        Tick(LEFT - 6, round(base - plot_h * v / top + 4, 2), str(v)) for v in (0, top // 2, top)
    ]
    last = len(minutes) - 1
    x_ticks = [
        Tick(
            round(LEFT + i * slot + (slot if i == last else slot / 2), 2),
            HEIGHT - 6,
            _clock(m.minute),
            "end" if i == last else "middle",
        )
        for i, m in enumerate(minutes)
        if (i % 15 == len(minutes) % 15 and last - i >= 8) or i == last
    ]
    return Chart(
        WIDTH,
        HEIGHT,
        bars,
        y_ticks,
        x_ticks,
        LEFT,
        WIDTH - RIGHT,
        TOP,
        base,
        sum(m.ok for m in minutes),
        sum(m.fail for m in minutes),
    )
