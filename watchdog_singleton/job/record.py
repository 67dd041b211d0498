"""A light record type for Job and RunState: fields with defaults, to and from plain dicts.

dataclasses would cost the resident supervisor about 2.5 MiB of imports (inspect, re, ...);
this is the little of it we use.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of the resident supervisor's memory; annotations are strings
    from typing import Any, TypeVar

    R = TypeVar("R", bound="Record")

REQUIRED = object()  # a field without a default


class Record:
    """Subclasses list FIELDS as (name, default) pairs, in order; a list or dict default is
    copied for each record. Unknown keys in from_dict are ignored (older or newer files)."""

    FIELDS: tuple[tuple[str, Any], ...] = ()

    def __init__(self, **values: Any) -> None:
        for name, default in self.FIELDS:
            if name in values:
                value = values.pop(name)
            elif default is REQUIRED:
                raise TypeError(f"{type(self).__name__} needs {name}")
            else:
                value = type(default)(default) if isinstance(default, (list, dict)) else default
            setattr(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__} has no field {sorted(values)[0]}")

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for name, _ in self.FIELDS:
            value = getattr(self, name)
            out[name] = type(value)(value) if isinstance(value, (list, dict)) else value
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        known = {name for name, _ in cls.FIELDS}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name, _ in self.FIELDS)
        return f"{type(self).__name__}({inner})"
