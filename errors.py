"""Every refusal loopmeta makes derives from `LoopmetaError`: catch that one class to handle them all.

Each message names what to fix (the config and target, the file and line, the node and call index with both sides).
"""

from __future__ import annotations


MODEL_ERROR = "loopmeta_model_error"
"""The attribute the engine sets on an exception that a recorded module's forward raised (the model's own error, not
loopmeta's): `(session id, step)` of the innermost recorded call it left."""


class LoopmetaError(Exception):
    """Base of every loopmeta refusal."""


class ConfigError(LoopmetaError):
    """A model config is malformed, unknown or does not fit the model (names the config and the target)."""


class InstrumentationError(LoopmetaError):
    """Instrumentation cannot start (already instrumented, modules shared with another session) or was misused."""


class SessionError(LoopmetaError):
    """A session cannot be set up: the model, its inputs or its image cannot be loaded as asked."""


class EventFileError(LoopmetaError):
    """An event file is not a valid loopmeta event stream (names the file, the line and the problem)."""


class CaptureError(LoopmetaError):
    """The TorchLens capture could not be made, or cannot be trusted."""


class MergeError(LoopmetaError):
    """Events cannot be turned into an exact report (names the node, the call index and the problem)."""


class AlignmentError(MergeError):
    """Events and the TorchLens trace of the same steps disagree."""


class ExactnessError(LoopmetaError):
    """Expanding a loop nest does not reproduce the observed call counts; the message lists every difference."""


class ReportFileError(LoopmetaError):
    """A report file cannot be written, or is not a loopmeta report of the version this loopmeta reads."""


class ExtrapolationError(LoopmetaError):
    """The work of the unprobed steps cannot be derived from the probed ones (names the op and both shapes)."""


class HardwareError(LoopmetaError):
    """A hardware entry is unknown or its TOML is malformed (names the file and the field)."""
