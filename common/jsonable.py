"""Plain JSON values of dataclasses, mappings and sequences."""

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
