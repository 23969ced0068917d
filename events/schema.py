"""Event schema: one `SessionHeader` per session, one `CallEvent` per call of an instrumented module, one
`SessionEnd` when the session is over (a stream without it was cut: the run was killed or the file truncated).

Invariants: `call_index` is 1-based per address over the whole session (TorchLens's `address:k` numbering);
`seq` is the 0-based order in which calls *started*; `parent` is the innermost instrumented call that was running
when this call started; the root module's address is "". Lane keys shared between parts: `events/lanes.py`.
When and on which thread a call ran (version 5) lives in the `EventTable` only (events/table.py `CLOCK`), never in a
`CallEvent`: nothing built from events (the report) can depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA = "loopmeta.events"
SCHEMA_VERSION = 5


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
    `select k of M`); `versions`: the packages the config depends on, and torch; `step_role`: the role whose
    calls start the steps (None when the config has no step target); `time_origin_ns`: the wall-clock time (Unix ns)
    of the session's clock origin, the instant the call times of version 5 count from (None before version 5)."""

    session: str
    config: str
    model_class: str
    versions: dict[str, str]
    container_sizes: dict[str, int] = field(default_factory=dict)
    step_role: str | None = None
    time_origin_ns: int | None = None
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


ENDINGS = ("returned", "raised", "interrupted")


@dataclass(frozen=True)
class SessionEnd:
    """How a session ended: `returned` (the instrumented block finished), `raised` (an exception left it, `error` its
    type) or `interrupted` (KeyboardInterrupt); `events` and `steps` count what was recorded, so a reader can tell a
    stream that lost events from a complete one. `write_failed`: the events file lost events (the memory kept them);
    `faults`: calls that could not be recorded (e.g. under torch.compile): no report can be made."""

    session: str
    events: int
    steps: int
    ended: str
    error: str | None = None
    write_failed: str | None = None
    faults: tuple[str, ...] = ()
