"""Strict JSON for request bodies: what RFC 8259 allows and nothing a parser would guess at.

Refused: invalid UTF-8, a byte-order mark, NaN/Infinity, numbers that overflow a float,
duplicate object keys (which value wins differs between parsers) and nesting deeper than
:data:`MAX_DEPTH`. Each refusal is a :class:`BadJSON` with a message fit for a client.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class BadJSON(ValueError):
    """The body is not acceptable JSON; the message says why."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BadJSON(f"duplicate key {key[:40]!r}")
        obj[key] = value
    return obj


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadJSON(f"number {text[:40]} is out of range")
    return value


def _constant(text: str) -> Any:
    raise BadJSON(f"{text} is not valid JSON")


def _depth(raw: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads(body: bytes) -> Any:
    """Parse a request body strictly; :class:`BadJSON` for anything refused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJSON(f"the body is not UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise BadJSON("the body starts with a byte-order mark")
    opened = text.count("[") + text.count("{")  # fewer openers than the limit: no scan
    if opened > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise BadJSON(f"nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(
            text, object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant
        )
    except BadJSON:
        raise
    except ValueError as exc:
        if "int_max_str_digits" in str(exc):
            raise BadJSON("a number has too many digits") from None
        raise BadJSON(str(exc)[:200]) from None
    except RecursionError:
        raise BadJSON(f"nested deeper than {MAX_DEPTH} levels") from None
