"""JSON through the C accelerator alone: `json` itself loads `re` and costs the resident
supervisor about 1 MiB; `_json` is the part that does the work and costs nothing."""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any


class _Context:
    """The settings json.JSONDecoder hands its C scanner, with json's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def _not_json(value: object) -> None:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]
# json.dumps(value, sort_keys=True) without indent is this same C encoder.
_encode = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None, ": ", ", ",
                             True, False, True)


def loads(text: str) -> Any:
    """Like json.loads; ValueError on anything that is not one JSON value."""
    start = len(text) - len(text.lstrip())
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return value


def dumps(value: Any) -> str:
    return "".join(_encode(value, 0))
