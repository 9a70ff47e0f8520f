"""Strict request-body JSON."""

from __future__ import annotations

import pytest

from relay.api.jsonbody import MAX_DEPTH, BadJSON, loads


def test_plain_json_parses() -> None:
    assert loads(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert loads('{"名前": "ü"}'.encode()) == {"名前": "ü"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": {"b": 1, "b": 1}}', "duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e400}', "out of range"),
        (b'{"a": "\xff"}', "not UTF-8"),
        ('\ufeff{"a": 1}'.encode(), "byte-order mark"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b"[" * 100_000, "nested deeper"),
        (b'{"a": ', ""),
        (b"{'a': 1}", ""),
    ],
)
def test_refused(body: bytes, words: str) -> None:
    with pytest.raises(BadJSON) as info:
        loads(body)
    assert words in str(info.value)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '{"a": "' + "[" * 500 + '\\"' + "{" * 500 + '"}'
    assert loads(text.encode())["a"].startswith("[[[")


def test_nesting_at_the_limit_is_fine() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
