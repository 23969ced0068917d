"""Runtime instrumentation: patch a model's target modules for one session and record a `CallEvent` per call."""

from .call import Call
from .instrumentation import Instrumentation, instrument, is_instrumented, uninstrument
from .recorder import Recorder

__all__ = ["Call", "Instrumentation", "Recorder", "instrument", "is_instrumented", "uninstrument"]
