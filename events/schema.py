"""Event schema: one `SessionHeader` per session, one `CallEvent` per call of an instrumented module.

Invariants: `call_index` is 1-based per address over the whole session (TorchLens's `address:k` numbering);
`seq` is the 0-based order in which calls *started*; `parent` is the innermost instrumented call that was running
when this call started; the root module's address is "". Lane keys shared between parts: `events/lanes.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA = "loopmeta.events"
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype and device of one tensor argument or result; `name` is the keyword or positional path."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    device: str


@dataclass(frozen=True)
class SessionHeader:
    """`container_sizes`: members of each container whose members run as a data-dependent selection (the M of
    `select k of M`); `versions`: the packages the config depends on, and torch."""

    session: str
    config: str
    model_class: str
    versions: dict[str, str]
    container_sizes: dict[str, int] = field(default_factory=dict)
    schema: str = SCHEMA
    version: int = SCHEMA_VERSION


@dataclass
class CallEvent:
    """One call of one instrumented module."""

    session: str
    seq: int
    step: int
    phase: str
    address: str
    class_name: str
    call_index: int
    parent: tuple[str, int] | None
    role: str
    stage: str | None
    lane: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    device: str | None = None
    error: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.call_index)
