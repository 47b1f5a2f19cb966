"""Parsing what clients send (websocket frames, API bodies) into a JSON object, strictly."""

from __future__ import annotations

import json
from typing import Any

import orjson

from runs.exceptions import InvalidJSON, InvalidRequest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object_parse(raw: str | bytes, *, what: str = "frame") -> dict[str, Any]:
    """The JSON object in `raw`. Not JSON is `invalid_json`; JSON that is not an object, or
    that no sane client sends (nested past the parser's depth), is `invalid_frame`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses some valid JSON (numbers beyond a double, lone surrogate escapes, very
        # deep nesting): the standard parser tells those apart from what is not JSON at all.
        try:
            value = json.loads(raw, parse_constant=_reject_constant)
        except RecursionError:
            raise InvalidRequest(f"The {what} is nested too deeply.") from None
        except ValueError:
            raise InvalidJSON(f"The {what} is not valid JSON.") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"The {what} must be a JSON object.")
    return value
