"""Events: what instrumentation emits and the merger reads. The schema, the lane contract, the JSONL stream."""

from .schema import SCHEMA_VERSION, CallEvent, SessionHeader, TensorMeta
from .stream import EventWriter, read_events

__all__ = ["SCHEMA_VERSION", "CallEvent", "EventWriter", "SessionHeader", "TensorMeta", "read_events"]
