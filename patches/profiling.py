"""Profiler labels (opt-in: `instrument(..., profile=True)`, `run_traced.py --profile`): every recorded call runs
inside a `torch.profiler.record_function` range named by events/labels.py, so a torch.profiler (Kineto) trace, GPU
kernels included, can be cut per stage, step and loop iteration (traces/profile.py).

Invariants: the range opens after the recorder has started the call and closes before it ends it, so on one thread
ranges nest as the calls do; a step's `lanes.Later` values (a GPU's host reads) are read before its range closes; a
range that cannot be opened leaves the call unrecorded (the recorder's stack is reset, the engine keeps the fault). `record_function` is a dispatcher call of its own: without `profile=True` nothing here
runs, and the wrappers issue no tensor op.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable

from ..events.labels import label
from .call import Call
from .recorder import Recorder


class ProfilingRecorder(Recorder):
    """A `Recorder` that also labels each call for the profiler."""

    def __init__(self, *args: Any, **kwargs: Any):
        from torch.profiler import record_function

        super().__init__(*args, **kwargs)
        self._range = record_function

    def enter(self, binding: Any, module: Any, forward: Callable[..., Any], args: tuple,
              kwargs: dict) -> tuple[Call, contextvars.Token]:
        call, token = super().enter(binding, module, forward, args, kwargs)
        try:
            call.label = self._range(label(call.stage, call.role, call.step, call.address, call.lane)).__enter__()
        except BaseException:
            self._stack.reset(token)
            raise
        return call, token

    def exit(self, call: Call, token: contextvars.Token, result: Any, error: BaseException | None,
             on_exit: Callable[..., Any] | None) -> None:
        try:
            if call.parent is None:  # a step ends: its `Later` values are read inside its range, not after it
                self._write_pending()
        finally:
            try:
                call.label.__exit__(None, None, None)
            finally:
                super().exit(call, token, result, error, on_exit)
