"""Events: what instrumentation emits and the merger reads. The schema, the lane contract, the JSONL stream."""

from .schema import SCHEMA_VERSION, CallEvent, SessionEnd, SessionHeader, TensorMeta
from .stream import EventStream, EventWriter, read_events

__all__ = ["SCHEMA_VERSION", "CallEvent", "EventStream", "EventWriter", "SessionEnd", "SessionHeader", "TensorMeta",
           "read_events"]
