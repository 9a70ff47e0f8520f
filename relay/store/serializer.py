"""arq's job serializer: orjson both ways, so nothing in Redis is ever unpickled."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: dict[str, Any]) -> bytes:
    """Serialize an arq job or result."""
    return orjson.dumps(obj, default=_default)


def loads(data: bytes) -> dict[str, Any]:
    """Deserialize an arq job or result."""
    value: dict[str, Any] = orjson.loads(data)
    return value


def _default(obj: Any) -> Any:
    # arq stores exceptions raised by jobs in results: keep their text, never the object
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"cannot serialize {type(obj).__name__}")
