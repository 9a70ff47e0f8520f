"""The order of a fan-out (workers/fanout.py and relay.store.codec.fan_out_order): round
robin over (tenant, origin) groups, and an origin whose events are paced goes last."""

from __future__ import annotations

from relay.domain.watch import Watch
from relay.store.codec import fan_out_order, waiting_entry
from workers.fanout import FanOutOrder


def entry(tenant: str, url: str) -> str:
    return waiting_entry(Watch(id="w", tenant=tenant, video_id="v", callback_url=url))


def test_groups_take_turns_whatever_their_sizes() -> None:
    slow, fast = entry("t1", "https://slow.example/a"), entry("t1", "https://fast.example/b")
    waiting = {f"w{i:03d}": slow for i in range(100)}
    waiting |= {f"x{i}": fast for i in range(3)}
    waiting["y0"] = entry("t2", "https://slow.example/other-path")  # another tenant
    order = fan_out_order(waiting)
    assert len(order) == 104 and len({w for w, _ in order}) == 104
    assert {"x0", "x1", "x2", "y0"} <= {w for w, _ in order[:9]}
    assert order[0][1] == slow.partition(":")[2]  # each with its origin's tag


def test_an_old_entry_without_a_tag_is_still_fanned_out() -> None:
    assert fan_out_order({"a": "acme", "b": "acme"}) == [("a", ""), ("b", "")]


def test_a_paced_origin_goes_last() -> None:
    items = [(f"s{i}", "S") for i in range(6)] + [(f"h{i}", "H") for i in range(6)]
    items = [x for pair in zip(items[:6], items[6:], strict=True) for x in pair]  # S H S H..
    order = FanOutOrder(items)
    assert len(order) == 12
    first = order.take(4)
    assert [w for w, _ in first] == ["s0", "h0", "s1", "h1"]
    order.slow(["S"])  # the deliverer paced S's events: H's come first now
    assert [w for w, _ in order.take(4)] == ["h2", "h3", "h4", "h5"]
    assert [w for w, _ in order.take(10)] == ["s2", "s3", "s4", "s5"]
    assert order.done and order.take(5) == []
