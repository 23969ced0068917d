"""Runtime instrumentation: event schema, recorder and the wrapt patch engine (no model knowledge here)."""

from .config import ConfigError, ModelConfig, Target, builtin_configs, detect_config, load_config
from .engine import Instrumentation, InstrumentationError, instrument, is_instrumented, uninstrument
from .events import SCHEMA_VERSION, CallEvent, EventFileError, SessionHeader, TensorMeta, read_events
from .recorder import Call, Recorder

__all__ = [
    "SCHEMA_VERSION", "Call", "CallEvent", "ConfigError", "EventFileError", "Instrumentation",
    "InstrumentationError", "ModelConfig", "Recorder", "SessionHeader", "Target", "TensorMeta", "builtin_configs",
    "detect_config", "instrument", "is_instrumented", "load_config", "read_events", "uninstrument",
]
