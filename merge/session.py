"""One call from a model and a session to a checked report: events over every step, a TorchLens probe of the
first steps, alignment, loop inference, exactness.

    report, output = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=64), probe="auto")
    write_report(report, "out/")
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..patches.config import ModelConfig
from ..patches.engine import instrument
from .align import align
from .gemms import gemm_table
from .merger import session_report, structural_report
from .report import Report
from .seed import seed_fields


@dataclass
class Probe:
    """What TorchLens traces: `fn(*args, **kwargs)`, normally `model.generate` with `max_new_tokens=2`
    (prefill + one decode step) or `model` itself for a single forward. It must repeat the session's first steps."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class FirstCall:
    """Remembers the arguments of the first call of `cls.<method>` (class-level wrapt wrapper, restored on exit):
    how the probe learns what `generate()` was called with inside a vendor helper such as v1's `infer()`."""

    def __init__(self, cls: type, method: str = "generate"):
        self.cls, self.method = cls, method
        self.args: tuple[Any, ...] | None = None
        self.kwargs: dict[str, Any] = {}

    def __enter__(self) -> "FirstCall":
        import wrapt

        self._own = self.cls.__dict__.get(self.method)

        def remember(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
            if self.args is None:
                self.args, self.kwargs = args, dict(kwargs)
            return wrapped(*args, **kwargs)

        wrapt.wrap_function_wrapper(self.cls, self.method, remember)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._own is None:
            delattr(self.cls, self.method)
        else:
            setattr(self.cls, self.method, self._own)

    def probe(self, model: Any, max_new_tokens: int = 2) -> Probe | None:
        """`generate` again on the same inputs for prefill + one decode step (never more steps than the session
        asked for); None when it was never called or had no `input_ids` to hand TorchLens."""
        if self.args is None:
            return None
        args, kwargs = self.args, dict(self.kwargs)
        if not args:  # TorchLens needs one positional input for a bound method
            if kwargs.get("input_ids") is None:
                return None
            args = (kwargs.pop("input_ids"),)
        asked = kwargs.pop("max_new_tokens", None)
        for name in ("max_length", "min_length", "min_new_tokens", "streamer"):  # would contradict a short probe
            kwargs.pop(name, None)
        kwargs["max_new_tokens"] = max_new_tokens if asked is None else min(asked, max_new_tokens)
        return Probe(getattr(model, self.method), args, kwargs)


def rebinds(config: ModelConfig, model: Any) -> list[tuple[object, str, object]]:
    out = []
    for r in config.rebind:
        namespace = sys.modules[type(model.get_submodule(r.module_of)).__module__]
        out.append((namespace, r.name, config.extractor(r.replacement)))
    return out


def probe_section(model: Any, probe: Probe, config: ModelConfig | None, events: list | None,
                  stage_of: dict[str, str | None] | None) -> dict[str, Any]:
    """Trace the probe; align it with the events when given (`stage_of`: instrumented address -> stage); its
    structural loop nest, the seed fields and the GEMM shapes per step and stage."""
    from .capture import capture

    tree = capture(probe.fn, probe.args, probe.kwargs, model=model,
                   rebind=rebinds(config, model) if config else ())
    section: dict[str, Any] = {}
    step = config.step_target.pattern if config and config.step_target else ""
    if events is not None:
        section.update(align(events, tree, list(stage_of or {}), step))
    structural = structural_report(tree, model)
    section.update({"loops": structural.loops, "counts": structural.counts, "seed": seed_fields(tree),
                    "gemms": gemm_table(tree, model, stage_of or {}, step)})
    return section


def trace_session(model: Any, run: Callable[[], Any], *, config: str | Path | ModelConfig = "auto",
                  probe: Probe | str | None = None, events: str | Path | None = None,
                  check_versions: bool = True, options: dict[str, Any] | None = None) -> tuple[Report, Any]:
    """Run `run()` instrumented, then trace `probe` with TorchLens and merge; returns the checked report and what
    `run()` returned. `probe="auto"` re-runs the session's first `generate()` call for 2 new tokens."""
    if isinstance(probe, str) and probe != "auto":
        raise ValueError(f"probe must be a Probe, 'auto' or None, got {probe!r}")
    inst = instrument(model, config, events=events, check_versions=check_versions, options=options)
    first = FirstCall(type(model)) if probe == "auto" else None
    with inst as recorder, (first or contextlib.nullcontext()):
        output = run()
    if first is not None:
        probe = first.probe(model, min(2, recorder.steps)) if recorder.steps else None
    report = session_report(recorder.events, inst.config, model_class=type(model).__name__,
                            sizes=recorder.header.containers)
    if probe is None and first is not None:
        report.notes.append("no TorchLens probe: the session never called generate() with input_ids")
    if probe is not None:
        report.probe = probe_section(model, probe, inst.config, recorder.events,
                                     {a: t.stage for a, _, t in inst.bindings})
    return report, output
