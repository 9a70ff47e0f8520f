"""Clip selection (relay/domain/clips.py), event bodies (relay/domain/events.py) and ids
(relay/domain/ids.py)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from relay.domain.clips import (
    Clip,
    ClipFilter,
    ClipSet,
    is_deliverable,
    is_settled,
    number,
    parse_clips,
    pending,
    refreshed,
)
from relay.domain.delivery import FinalEvent
from relay.domain.events import (
    body,
    clips_ready_body,
    iso,
    video_failed_body,
    watch_expired_body,
)
from relay.domain.ids import event_id, new_watch_id
from relay.domain.watch import Watch

AT_MS = 1_795_860_000_000  # 2026-11-28T10:00:00Z
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def clip(cid: str, score: Any = 50, **fields: Any) -> Clip:
    """A deliverable clip unless *fields* say otherwise."""
    out: Clip = {
        "id": cid,
        "score": score,
        "duration": 30,
        "status": "completed",
        "downloadUrl": f"https://cdn.example/{cid}.mp4",
        "thumbnailUrl": f"https://cdn.example/{cid}.jpg",
        "favorited": False,
    }
    out.update(fields)
    return out


def ids(clips: list[Clip]) -> list[str]:
    return [c["id"] for c in clips]


def watch(**overrides: Any) -> Watch:
    base: dict[str, Any] = {
        "id": "wat_" + "a" * 24,
        "tenant": "acme",
        "video_id": "vid_1",
        "callback_url": "https://hooks.example/cb",
    }
    base.update(overrides)
    return Watch(**base)


# --- ClipSet: the prepared selection a fan-out uses ---------------------------------------

SCORES: list[Any] = [0, 10, 10, 35.5, 50, 50, 79.999, 80, 99, 100, None, True, "90", -5, 120]


def random_clips(rng: random.Random, n: int) -> list[Clip]:
    """Clips with every awkward score shape (ties, floats, missing, bools, strings, out of
    range), mixed statuses, missing links, favourites and durations."""
    out = []
    for i in range(n):
        extra: dict[str, Any] = {
            "duration": rng.choice([5, 30, 30, 61.5, None, "x"]),
            "favorited": rng.choice([True, False, None, "yes"]),
            "status": rng.choice(["completed", "ready", "exported", "generating", "failed"]),
        }
        if rng.random() < 0.1:
            extra["downloadUrl"] = None
        out.append(clip(f"c{i}", rng.choice(SCORES), **extra))
    return out


def random_filter(rng: random.Random) -> ClipFilter:
    low = rng.choice([0, 0, 10, 35.5, 50, 80, 100, rng.uniform(0, 100)])
    high = rng.choice([None, None, low, 50, 99, 100, rng.uniform(low, 100)])
    return ClipFilter(
        min_score=low,
        max_score=high if high is None or high >= low else None,
        favorited_only=rng.random() < 0.3,
        sort_by=rng.choice(["score", "duration"]),
        sort_order=rng.choice(["asc", "desc"]),
    )


def test_clip_set_selects_exactly_what_the_filter_does() -> None:
    """The bisected, shared selection equals ClipFilter.select -- same clips, same order,
    same bytes -- for every filter, whatever the clips look like."""
    rng = random.Random(20261201)
    for _ in range(300):
        clips = random_clips(rng, rng.randint(0, 25))
        prepared = ClipSet(clips)
        for _ in range(30):
            f = random_filter(rng)
            expected = f.select(clips)
            assert prepared.select(f) == expected, f
            fragment, count = prepared.select_json(f)
            assert orjson.dumps({"c": fragment}) == orjson.dumps({"c": expected})
            assert count == len(expected)


def test_clip_set_shares_one_fragment_per_selection() -> None:
    clips = [clip("a", 90), clip("b", 70), clip("c", 40)]
    prepared = ClipSet(clips)
    first, n = prepared.select_json(ClipFilter(min_score=41))
    again, m = prepared.select_json(ClipFilter(min_score=69.5))  # the same two clips
    assert first is again and n == m == 2
    assert prepared.select_json(ClipFilter(min_score=71))[0] is not first


def test_clips_ready_body_from_a_clip_set_is_the_same_body() -> None:
    clips = [clip("a", 90), clip("b", 70, favorited=True), clip("c", 40)]
    for w in (watch(min_score=50), watch(min_score=0, sort_order="asc"), watch(max_score=80)):
        assert clips_ready_body(w, ClipSet(clips), AT_MS) == clips_ready_body(w, clips, AT_MS)


def test_scores_are_written_as_given_not_as_floats() -> None:
    """``"minScore": 80``, as the SPEC's example and ScaleReach write scores, not ``80.0``:
    a receiver decoding into an integer (Go's ``int``) failed on ``80.0`` (2026-12-06)."""
    body = clips_ready_body(watch(min_score=80.0, max_score=95.0), [clip("a", 90)], AT_MS)
    assert b'"minScore":80,' in body and b'"maxScore":95}' in body, body
    body = clips_ready_body(watch(min_score=79.5), [clip("a", 90)], AT_MS)
    assert b'"minScore":79.5,' in body and b"maxScore" not in body, body


# --- number ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (80, 80.0),
        (79.5, 79.5),
        (0, 0.0),
        (True, None),
        (False, None),
        (None, None),
        ([80], None),
        # a number written as a string (a database's decimal column) is that number
        ("80", 80.0),
        ("87.50", 87.5),
        ("-3", -3.0),
        (".5", 0.5),
        ("1e2", 100.0),
        # not plain decimal notation: not a number (float() would take most of them)
        ("", None),
        (" 80", None),
        ("80 ", None),
        ("nan", None),
        ("inf", None),
        ("1_000", None),
        ("0x1f", None),
        ("+80", None),
        ("80%", None),
        ("1e999", None),  # too large for a float: not finite
        ("9" * 65, None),  # longer than any score
    ],
)
def test_number(value: Any, expected: float | None) -> None:
    assert number(value) == expected


# --- ClipFilter.passes --------------------------------------------------------------------


def test_min_score_is_inclusive() -> None:
    f = ClipFilter(min_score=80)
    assert f.passes(clip("a", 80))
    assert f.passes(clip("b", 80.0))
    assert f.passes(clip("c", 95))
    assert not f.passes(clip("d", 79.999))


def test_max_score_is_inclusive() -> None:
    f = ClipFilter(min_score=20, max_score=60)
    assert f.passes(clip("a", 60))
    assert f.passes(clip("b", 20))
    assert not f.passes(clip("c", 60.01))
    assert not f.passes(clip("d", 19.9))


def test_min_equals_max() -> None:
    f = ClipFilter(min_score=70, max_score=70)
    assert f.passes(clip("a", 70))
    assert not f.passes(clip("b", 71))


def test_default_filter_takes_every_scored_clip() -> None:
    f = ClipFilter()
    assert f.passes(clip("a", 0))
    assert f.passes(clip("b", 100))


def test_bool_and_missing_scores_are_not_numbers() -> None:
    f = ClipFilter()
    assert not f.passes(clip("a", True))
    assert not f.passes(clip("b", False))
    assert not f.passes(clip("c", "ninety"))
    assert not f.passes(clip("d", None))
    no_score = clip("e")
    del no_score["score"]
    assert not f.passes(no_score)


def test_favorited_only() -> None:
    f = ClipFilter(favorited_only=True)
    assert f.passes(clip("a", favorited=True))
    assert not f.passes(clip("b", favorited=False))
    assert not f.passes(clip("c", favorited="true"))
    assert not f.passes(clip("d", favorited=1))
    no_flag = clip("e")
    del no_flag["favorited"]
    assert not f.passes(no_flag)
    assert ClipFilter().passes(clip("f", favorited=False))


# --- deliverability -----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "ready", "exported"])
def test_final_good_statuses_are_deliverable(status: str) -> None:
    assert is_deliverable(clip("a", status=status))
    assert is_settled(clip("a", status=status))


@pytest.mark.parametrize("status", ["detected", "generating", "failed", "weird", None])
def test_other_statuses_are_not_deliverable(status: str | None) -> None:
    assert not is_deliverable(clip("a", status=status))


@pytest.mark.parametrize("status", ["completed", "ready", "exported"])
def test_final_status_without_download_url_is_not_deliverable(status: str) -> None:
    c = clip("a", status=status, downloadUrl=None)
    assert not is_deliverable(c)
    assert not is_settled(c)  # still rendering: the URL will come
    missing = clip("b", status=status)
    del missing["downloadUrl"]
    assert not is_deliverable(missing)


def test_settled() -> None:
    assert is_settled(clip("a", status="failed", downloadUrl=None))
    assert not is_settled(clip("b", status="detected", downloadUrl=None))
    assert not is_settled(clip("c", status="generating", downloadUrl=None))


def test_select_drops_undeliverable_clips() -> None:
    clips = [
        clip("ok-completed", 90),
        clip("ok-ready", 85, status="ready"),
        clip("ok-exported", 80, status="exported"),
        clip("detected", 99, status="detected", downloadUrl=None),
        clip("generating", 98, status="generating", downloadUrl=None),
        clip("failed", 97, status="failed", downloadUrl=None),
        clip("no-url", 96, downloadUrl=None),
    ]
    assert ids(ClipFilter().select(clips)) == ["ok-completed", "ok-ready", "ok-exported"]


# --- ClipFilter.select: filters and order -------------------------------------------------


def test_select_filters_by_score_range_and_favourite() -> None:
    clips = [
        clip("a", 95, favorited=True),
        clip("b", 80, favorited=False),
        clip("c", 79, favorited=True),
        clip("d", 60, favorited=True),
        clip("e", 90, favorited=True),
    ]
    assert ids(ClipFilter(min_score=80).select(clips)) == ["a", "e", "b"]
    assert ids(ClipFilter(min_score=60, max_score=90).select(clips)) == ["e", "b", "c", "d"]
    assert ids(ClipFilter(min_score=80, favorited_only=True).select(clips)) == ["a", "e"]


def test_scores_written_as_strings_are_selected_and_ordered_as_numbers() -> None:
    """A tester's upstream sent ``"score": "90"``: no watch ever got that clip (2026-12-08).
    It is a number to the filters and the order, and is delivered as the upstream wrote it."""
    clips = [clip("a", "95.5"), clip("b", 80), clip("c", "79"), clip("d", "n/a"), clip("e", 90)]
    f = ClipFilter(min_score=80)
    assert ids(f.select(clips)) == ["a", "e", "b"]
    assert ids(ClipFilter(sort_order="asc").select(clips)) == ["c", "b", "e", "a"]
    clip_set = ClipSet(clips)
    assert ids(clip_set.select(f)) == ["a", "e", "b"]
    body = clips_ready_body(watch(min_score=80.0), clip_set.select(f), AT_MS)
    assert b'"score":"95.5"' in body, body


def test_sort_by_score_desc_is_the_default() -> None:
    clips = [clip("a", 10), clip("b", 90), clip("c", 50.5)]
    assert ids(ClipFilter().select(clips)) == ["b", "c", "a"]


def test_sort_by_score_asc() -> None:
    clips = [clip("a", 10), clip("b", 90), clip("c", 50.5)]
    assert ids(ClipFilter(sort_order="asc").select(clips)) == ["a", "c", "b"]


def test_sort_by_duration() -> None:
    clips = [clip("a", 10, duration=45), clip("b", 90, duration=12.5), clip("c", 50, duration=30)]
    assert ids(ClipFilter(sort_by="duration").select(clips)) == ["a", "c", "b"]
    assert ids(ClipFilter(sort_by="duration", sort_order="asc").select(clips)) == ["b", "c", "a"]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_clips_without_the_sort_key_go_last(order: str) -> None:
    no_duration = clip("none", 99)
    del no_duration["duration"]
    clips = [
        clip("str", 98, duration="30 s"),
        no_duration,
        clip("short", 10, duration=5),
        clip("bool", 97, duration=True),
        clip("long", 20, duration=50),
    ]
    got = ids(ClipFilter(sort_by="duration", sort_order=order).select(clips))
    expected_head = ["short", "long"] if order == "asc" else ["long", "short"]
    assert got[:2] == expected_head
    assert sorted(got[2:]) == ["bool", "none", "str"]


def test_equal_keys_keep_upstream_order() -> None:
    clips = [clip("x", 70), clip("y", 70), clip("z", 70)]
    assert ids(ClipFilter().select(clips)) == ["x", "y", "z"]
    assert ids(ClipFilter(sort_order="asc").select(clips)) == ["x", "y", "z"]


def test_select_passes_clip_objects_through_untouched() -> None:
    hooks_obj = {"question": "What happened?", "statement": "This changed everything"}
    hooks_list = ["Nobody expected it", "Wait for it"]
    emotions_obj = {"primary": "surprise", "intensity": 0.7}
    emotions_list = ["joy", "anticipation"]
    a = clip("a", 90, hooks=hooks_obj, emotions=emotions_list, extraField={"nested": [1, 2]})
    b = clip("b", 80, hooks=hooks_list, emotions=emotions_obj, count=None)
    before = orjson.dumps([a, b])
    chosen = ClipFilter().select([b, a])
    assert chosen[0] is a
    assert chosen[1] is b
    assert chosen[0]["hooks"] is hooks_obj
    assert chosen[0]["emotions"] is emotions_list
    assert chosen[1]["hooks"] is hooks_list
    assert chosen[1]["emotions"] is emotions_obj
    assert orjson.dumps([a, b]) == before  # nothing was changed


def test_select_of_nothing() -> None:
    assert ClipFilter(min_score=50).select([]) == []
    assert ClipFilter(min_score=50).select([clip("a", 10)]) == []


# --- pending ------------------------------------------------------------------------------


def test_pending_counts_only_clips_some_filter_wants() -> None:
    clips = [
        clip("r1", 90, status="generating", downloadUrl=None),  # wanted by high
        clip("r2", 30, status="detected", downloadUrl=None),  # wanted by low only
        clip("r3", 10, status="detected", downloadUrl=None),  # wanted by nobody
        clip("r4", 95, downloadUrl=None),  # completed, no URL yet: still rendering
        clip("done", 99),  # deliverable: settled
        clip("failed", 99, status="failed", downloadUrl=None),  # settled
    ]
    high = ClipFilter(min_score=80)
    low = ClipFilter(min_score=20, max_score=40)
    assert pending(clips, [high]) == {0, 3}
    assert pending(clips, [low]) == {1}
    assert pending(clips, [high, low]) == {0, 1, 3}
    assert len(pending(clips, [ClipFilter()])) == 4
    assert pending(clips, []) == set()
    assert pending(clips, iter([high, low])) == {0, 1, 3}  # any iterable
    fav = ClipFilter(favorited_only=True)
    assert pending(clips, [fav]) == set()


# --- refreshed ----------------------------------------------------------------------------


def test_a_refresh_changes_the_links_of_the_clips_an_event_carries_and_nothing_else() -> None:
    """Rule (the same body on every retry of an event, but for refreshed links): a link
    refresh gives the event's clips their fresh links; a clip rendered since (one left out
    at the render timeout) does not join it, and one no longer deliverable upstream keeps
    its stored self rather than leaving the event."""
    stored = [clip("a", 90), clip("b", 70), clip("c", 60)]
    fresh = [
        clip("a", 90, downloadUrl="https://cdn.example/a-new.mp4"),
        clip("b", 70, status="failed", downloadUrl=None),  # gone bad upstream since
        clip("late", 80),  # rendered after the event was made
        clip("c", 60, downloadUrl="https://cdn.example/c-new.mp4"),
    ]
    got = refreshed(stored, fresh)
    assert [c["id"] for c in got] == ["a", "b", "c"]
    assert got[0]["downloadUrl"].endswith("a-new.mp4") and got[2]["downloadUrl"].endswith(
        "c-new.mp4"
    )
    assert got[1] == stored[1]
    assert refreshed([], fresh) == []


def test_a_refresh_of_clips_sharing_an_id_keeps_each_and_changes_only_links() -> None:
    """Clips sharing an id keep their places (each takes the links of the fresh clip at its
    place among those of its id), and a fresh clip whose other fields changed (its score)
    changes only the links: what a watch's filters read stays as the event had it. Fails
    before: matched by id alone, both became the last of the id, and a redelivery of an
    event carrying the score-90 clip carried none past minScore 80 (a tester's run)."""
    high = clip("c1", 90, title="high")
    low = clip("c1", 10, title="low")
    fresh = [
        clip("c1", 90, title="high", downloadUrl="https://cdn.example/high-new.mp4"),
        clip("c1", 10, title="low", downloadUrl="https://cdn.example/low-new.mp4"),
        clip("c2", 70, title="rescored", downloadUrl="https://cdn.example/c2-new.mp4"),
    ]
    assert refreshed([high], fresh) == [{**high, "downloadUrl": "https://cdn.example/high-new.mp4"}]
    got = refreshed([high, low], fresh)
    assert [(c["score"], c["title"]) for c in got] == [(90, "high"), (10, "low")]
    assert got[1]["downloadUrl"].endswith("low-new.mp4")
    stored_c2 = clip("c2", 50, title="as sent")
    (c2,) = refreshed([stored_c2], fresh)
    assert c2 == {**stored_c2, "downloadUrl": "https://cdn.example/c2-new.mp4"}
    odd = clip("x", 50)
    odd["id"] = {"not": "hashable"}
    assert refreshed([odd], [odd]) == [odd]  # (an odd id: kept as stored, no crash)


# --- parse_clips --------------------------------------------------------------------------


def test_parse_clips() -> None:
    a, b = clip("a"), clip("b")
    assert parse_clips({"videoId": "v", "clips": [a, b], "count": 99}) == [a, b]
    assert parse_clips({"videoId": "v", "clips": [a, "junk", 3, None, b]}) == [a, b]
    assert parse_clips({"videoId": "v", "clips": []}) == []
    got = parse_clips({"clips": [a]})
    assert got[0] is a
    # no clip list is no answer (an error body answered 200), not "no clips"
    for answer in ({"videoId": "v"}, {"videoId": "v", "clips": None}, {"error": "Internal"}, {}):
        with pytest.raises(ValueError, match="no clip list"):
            parse_clips(answer)


@pytest.mark.parametrize("payload", [[], "clips", None, 3])
def test_parse_clips_needs_an_object(payload: Any) -> None:
    with pytest.raises(ValueError, match="not an object"):
        parse_clips(payload)


@pytest.mark.parametrize("clips", [{"a": 1}, "list", 5])
def test_parse_clips_needs_a_list(clips: Any) -> None:
    with pytest.raises(ValueError, match="clip list"):
        parse_clips({"clips": clips})


# --- events -------------------------------------------------------------------------------


def begin_event(w: Watch, event: FinalEvent, eid: str) -> None:
    """Give *w* its event as the fan-out stores it (finalize.lua's ``ev`` field)."""
    w.status = "delivering"
    w.event_id, w.event_type, w.final_ms = eid, event.event_type, event.at_ms
    w.clips_ms = event.clips_ms
    if event.video_status:
        w.video_status, w.video_progress = event.video_status, event.video_progress
    w.video_error = event.video_error or None


def body_of(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data


def test_clips_ready_body() -> None:
    w = watch(min_score=80)
    clips = [
        clip("low", 50),
        clip("top", 95, hooks=["x", "y"]),
        clip("mid", 80, hooks={"question": "q", "statement": "s"}),
        clip("rendering", 99, status="generating", downloadUrl=None),
    ]
    begin_event(
        w,
        FinalEvent("clips.ready", AT_MS, video_status="completed", clips_ms=AT_MS - 5000),
        event_id(w.id, "clips.ready"),
    )
    assert w.event_id == event_id(w.id, "clips.ready")
    assert w.video_status == "completed"
    assert w.clips_ms == AT_MS - 5000
    made = body_of(body(w, ClipSet(clips)))
    assert set(made) == {"type", "timestamp", "data"}
    assert made["type"] == "clips.ready"
    assert made["timestamp"] == "2026-11-28T10:00:00Z"
    assert RFC3339_Z.match(made["timestamp"])
    data = made["data"]
    assert data["watchId"] == w.id
    assert data["videoId"] == "vid_1"
    assert data["minScore"] == 80
    assert [c["id"] for c in data["clips"]] == ["top", "mid"]
    assert data["clips"][0] == clips[1]  # exactly as the upstream gave it
    assert data["clips"][1]["hooks"] == {"question": "q", "statement": "s"}
    assert data["count"] == len(data["clips"]) == 2
    assert data["metadata"] == {}
    assert "maxScore" not in data


def test_clips_ready_body_default_min_score_and_empty() -> None:
    data = body_of(clips_ready_body(watch(), [], AT_MS))["data"]
    assert data["minScore"] == 0
    assert data["clips"] == []
    assert data["count"] == 0
    assert data["metadata"] == {}


def test_clips_ready_body_applies_every_watch_option() -> None:
    w = watch(
        min_score=10,
        max_score=60,
        favorited_only=True,
        sort_by="duration",
        sort_order="asc",
        metadata={"job": 42, "tags": ["a"]},
    )
    clips = [
        clip("a", 50, duration=40, favorited=True),
        clip("b", 55, duration=20, favorited=True),
        clip("c", 30, duration=10, favorited=False),
        clip("d", 61, duration=5, favorited=True),
        clip("e", 60, duration=30, favorited=True, status="ready"),
    ]
    data = body_of(clips_ready_body(w, clips, AT_MS))["data"]
    assert [c["id"] for c in data["clips"]] == ["b", "e", "a"]
    assert data["count"] == 3
    assert data["metadata"] == {"job": 42, "tags": ["a"]}
    assert data["minScore"] == 10
    assert data["maxScore"] == 60


def test_count_ignores_the_upstream_count() -> None:
    # the upstream's `count` is not len(clips); the event's is
    payload = {"videoId": "vid_1", "clips": [clip("a", 90), clip("b", 20)], "count": 17}
    data = body_of(clips_ready_body(watch(min_score=50), parse_clips(payload), AT_MS))["data"]
    assert data["count"] == 1


def test_video_failed_body() -> None:
    w = watch(metadata={"k": "v"})
    begin_event(
        w,
        FinalEvent(
            "video.failed", AT_MS, video_status="failed", video_error="transcription failed"
        ),
        event_id(w.id, "video.failed"),
    )
    made = body_of(body(w, None))
    assert made == body_of(video_failed_body(w, "failed", "transcription failed", AT_MS))
    assert made["type"] == "video.failed"
    assert made["timestamp"] == "2026-11-28T10:00:00Z"
    data = made["data"]
    assert data["watchId"] == w.id
    assert data["videoId"] == "vid_1"
    assert data["metadata"] == {"k": "v"}
    assert data["videoStatus"] == "failed"
    assert data["error"] == "transcription failed"


def test_video_failed_not_found() -> None:
    data = body_of(video_failed_body(watch(), "not_found", "video not found", AT_MS))["data"]
    assert data["videoStatus"] == "not_found"
    assert data["error"] == "video not found"
    assert data["metadata"] == {}


def test_watch_expired_body() -> None:
    w = watch(video_status="analyzing", video_progress=70.0)
    begin_event(w, FinalEvent("watch.expired", AT_MS + 1234), event_id(w.id, "watch.expired"))
    made = body_of(body(w, None))
    assert made == body_of(watch_expired_body(w, AT_MS + 1234))
    assert made["type"] == "watch.expired"
    assert made["timestamp"] == "2026-11-28T10:00:01Z"
    data = made["data"]
    assert data["watchId"] == w.id
    assert data["videoId"] == "vid_1"
    assert data["metadata"] == {}
    assert data["videoStatus"] == "analyzing"
    assert data["videoProgress"] == 70


def test_timestamps() -> None:
    assert iso(AT_MS) == "2026-11-28T10:00:00Z"
    assert iso(0) == "1970-01-01T00:00:00Z"
    stamp = body_of(clips_ready_body(watch(), [], AT_MS + 999))["timestamp"]
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert int(parsed.timestamp() * 1000) == AT_MS


def test_a_body_is_the_same_bytes_whenever_it_is_built() -> None:
    """A body is built from the watch and the video's stored clips document: every build
    (each retry, on any worker) gives the same bytes, and only new clips change it."""
    clips = [clip("a", 90, hooks={"q": 1.5e-7}), clip("b", 70, favorited=True), clip("c", 40)]
    doc = ClipSet(clips).doc()
    w = watch(min_score=50, metadata={"k": [1, 2.5, None]})
    begin_event(w, FinalEvent("clips.ready", AT_MS, clips_ms=AT_MS), event_id(w.id, "clips.ready"))
    first = body(w, ClipSet.from_doc(doc))
    assert body(w, ClipSet.from_doc(doc)) == first == body(w, ClipSet(clips))
    assert ClipSet.from_doc(doc).doc() == doc
    fresh = [{**c, "downloadUrl": c["downloadUrl"] + "?fresh"} for c in clips]
    assert body(w, ClipSet(fresh)) != first


def test_a_body_needs_an_event() -> None:
    with pytest.raises(ValueError, match="no event"):
        body(watch(), None)
    w = watch()
    begin_event(w, FinalEvent("clips.ready", AT_MS), event_id(w.id, "clips.ready"))
    with pytest.raises(ValueError, match="clips"):
        body(w, None)


# --- ids ----------------------------------------------------------------------------------


def test_event_id_is_deterministic_and_distinct() -> None:
    w1, w2 = "wat_" + "a" * 24, "wat_" + "b" * 24
    assert event_id(w1, "clips.ready") == event_id(w1, "clips.ready")
    all_ids = {
        event_id(w, t) for w in (w1, w2) for t in ("clips.ready", "video.failed", "watch.expired")
    }
    assert len(all_ids) == 6
    for eid in all_ids:
        assert re.fullmatch(r"evt_[0-9a-z]{24}", eid), eid


def test_an_event_id_depends_on_the_watch_and_the_type_only() -> None:
    w = watch()
    begin_event(w, FinalEvent("clips.ready", AT_MS), event_id(w.id, "clips.ready"))
    assert w.event_id == event_id(w.id, "clips.ready") != event_id(w.id, "video.failed")
    assert w.event_id != event_id("wat_" + "c" * 24, "clips.ready")


def test_id_encoding_is_rfc4648_base32_lower_case() -> None:
    """The table-driven encoder writes what base64.b32encode writes (ids stay stable)."""
    import base64
    import hashlib

    from relay.domain.ids import _encode

    for i in range(5000):
        digest = hashlib.sha256(str(i).encode()).digest()
        assert _encode(digest) == base64.b32encode(digest[:15]).decode().lower()
    assert _encode(bytes(15)) == "a" * 24 and _encode(b"\xff" * 15) == "7" * 24


def test_new_watch_id_format() -> None:
    seen = {new_watch_id() for _ in range(500)}
    assert len(seen) == 500
    for wid in seen:
        assert re.fullmatch(r"wat_[0-9a-z]{24}", wid), wid


def test_fresh_ids_are_random_in_every_character() -> None:
    """A watch id and a ping's event id are ``wat_``/``evt_`` + 24 characters of 120 random
    bits: every ping of a watch has its own ``webhook-id`` (the same one each time would
    be dropped by a receiver that dedupes), and no position is constant (a mutation review:
    15 random bytes cut to 8 went unnoticed)."""
    from relay.domain.ids import new_event_id, new_watch_id

    for make, prefix in ((new_watch_id, "wat_"), (new_event_id, "evt_")):
        ids = [make() for _ in range(200)]
        assert len(set(ids)) == 200
        assert all(re.fullmatch(prefix + "[a-z2-7]{24}", i) for i in ids), ids[:3]
        for position in range(4, 28):
            assert len({i[position] for i in ids}) > 1, (prefix, position)
