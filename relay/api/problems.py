"""RFC 9457 problem details: every error the API answers is one of these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

PROBLEM_TYPE = "https://clip-relay.dev/problems/"
CONTENT_TYPE = "application/problem+json"


class ProblemError(web.HTTPException):
    """Raise from a view to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status
        super().__init__(headers=headers)
        self.detail = detail
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + (slug or title.lower().replace(" ", "-")),
            "title": title,
            "status": status,
            "detail": detail,
        }
        if errors is not None:
            body["errors"] = list(errors)
        self.body = orjson.dumps(body)
        self.content_type = CONTENT_TYPE


def invalid(errors: Sequence[dict[str, str]], detail: str | None = None) -> ProblemError:
    """422: the request is well-formed JSON but some fields are wrong."""
    first = errors[0]
    return ProblemError(
        422,
        "Validation failed",
        detail or f"{first['field']}: {first['message']}",
        slug="validation",
        errors=errors,
    )


# what a field's pattern asks for, as the error says it (the rest keep pydantic's words)
PATTERN_WORDS = {
    "videoId": "must be 1-128 characters of A-Z, a-z, 0-9, _ and -",
    "secret": "must be whsec_ followed by base64 (A-Z, a-z, 0-9, +, / and =)",
}


# the JSON types in the API's words (pydantic's say "dictionary", "valid number")
TYPE_WORDS = {
    "dict_type": "must be a JSON object",
    "float_type": "must be a number",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a JSON array",
}


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as ``[{field, message}]`` with the API's (camelCase) field names."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "string_pattern_mismatch" and field in PATTERN_WORDS:
            message = PATTERN_WORDS[field]  # (the rule in words, not a regular expression)
        elif err["type"] in TYPE_WORDS:
            message = TYPE_WORDS[err["type"]]
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        out.append({"field": field, "message": message})
    return out


def not_found(what: str = "watch") -> ProblemError:
    """404 for a resource the caller cannot see (another tenant's looks the same)."""
    return ProblemError(404, "Not found", f"no such {what}", slug="not-found")
