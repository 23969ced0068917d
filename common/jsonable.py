"""Plain JSON values of dataclasses, mappings and sequences, and exact copies of plain JSON values."""

from __future__ import annotations

import dataclasses
from typing import Any


def jsonable(obj: Any) -> Any:
    """Dataclasses (fields in declaration order), dicts (keys as strings), lists and tuples as JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


_SCALARS = (str, int, float, bool)


class NotPlain(TypeError):
    """A value that is not plain JSON."""


def plain_copy(value: Any) -> Any:
    """A deep copy of a plain JSON value (None, str, int, float, bool, lists, tuples as lists, str-keyed dicts); raises
    `NotPlain` for anything else (a subclass too: an `IntEnum`, a `torch.Size`, an `OrderedDict`)."""
    kind = type(value)
    if value is None or kind in _SCALARS:
        return value
    if kind is list or kind is tuple:
        return [plain_copy(v) for v in value]
    if kind is dict and all(type(k) is str for k in value):
        return {k: plain_copy(v) for k, v in value.items()}
    raise NotPlain(kind.__name__)
