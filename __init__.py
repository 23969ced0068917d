"""loopmeta: which loops a model runs on an input, how many times, on what shapes — exactly.

The face of the package:

- `instrument(model, config="auto", events=None)`: record one `CallEvent` per call of the config's target modules
  (a context manager yielding the recorder; `uninstrument(model)` undoes it);
- `trace_session(model, run, probe="auto")`: the whole pipeline, events over every step, a TorchLens probe of the
  first steps, alignment, loop inference; returns an exact `Report` and what `run()` returned;
- `trace_structure(model, args)`: config-free, the exact loop nest of any PyTorch model from one TorchLens trace;
- `write_report(report, out_dir)` / `read_report(path)`: JSON, text and Markdown forms, checked for exactness;
- `LoopmetaError`: the base of every refusal (`ConfigError`, `InstrumentationError`, `MergeError`, ...).

Example (config-free, runs anywhere torch and TorchLens are installed):

    >>> import torch
    >>> import loopmeta
    >>> blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.blocks = blocks
    ...     def forward(self, x):
    ...         for block in self.blocks:
    ...             x = block(x)
    ...         return x
    >>> report = loopmeta.trace_structure(Net(), torch.randn(2, 8))
    >>> print(loopmeta.to_text(report))
    loopmeta report: Net (config-free), from torchlens
    <BLANKLINE>
    <root Net>
      blocks[0..2] for 3 (Linear)
    >>> import tempfile
    >>> sorted(loopmeta.write_report(report, tempfile.mkdtemp()))  # the files' paths; an inexact report is refused
    ['json', 'markdown', 'text']
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (AlignmentError, CaptureError, ConfigError, EventFileError, ExactnessError, InstrumentationError,
                     LoopmetaError, MergeError, ReportFileError, SessionError)

__version__ = "0.1.0"

_LAZY = {  # heavy modules (torch, TorchLens) load on first use, not at `import loopmeta`
    "instrument": "patches.instrumentation", "uninstrument": "patches.instrumentation",
    "Instrumentation": "patches.instrumentation", "trace_session": "pipeline", "trace_structure": "pipeline",
    "Probe": "pipeline", "Report": "report.schema", "read_report": "report.schema",
    "write_report": "writers.files", "to_text": "writers.text", "to_markdown": "writers.markdown",
    "read_events": "events.stream", "load_config": "model_configs.config",
}

__all__ = ["AlignmentError", "CaptureError", "ConfigError", "EventFileError", "ExactnessError", "InstrumentationError",
           "LoopmetaError", "MergeError", "ReportFileError", "SessionError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
