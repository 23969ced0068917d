"""Events: what instrumentation emits and the merger reads. The schema, the lane contract, the session's calls as
compact columns, the JSONL file."""

from .schema import SCHEMA_VERSION, CallEvent, SessionEnd, SessionHeader, TensorMeta
from .stream import EventStream, EventWriter, read_events
from .table import EventTable

__all__ = ["SCHEMA_VERSION", "CallEvent", "EventStream", "EventTable", "EventWriter", "SessionEnd", "SessionHeader",
           "TensorMeta", "read_events"]
