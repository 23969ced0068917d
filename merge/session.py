"""One call from a model and a session to a checked report: events over every step, a TorchLens probe of the
first steps, alignment, loop inference, exactness.

    report, output = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=64),
                                   probe=Probe(model.generate, kwargs={**inputs, "max_new_tokens": 2}))
    write_report(report, "out/")
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..patches.config import ModelConfig
from ..patches.engine import instrument
from .align import align
from .merger import session_report, static_children, structural_report
from .report import Report
from .seed import seed_fields


@dataclass
class Probe:
    """What TorchLens traces: `fn(*args, **kwargs)`, normally `model.generate` with `max_new_tokens=2`
    (prefill + one decode step) or `model` itself for a single forward. It must repeat the session's first steps."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def rebinds(config: ModelConfig, model: Any) -> list[tuple[object, str, object]]:
    out = []
    for r in config.rebind:
        namespace = sys.modules[type(model.get_submodule(r.module_of)).__module__]
        out.append((namespace, r.name, config.extractor(r.replacement)))
    return out


def probe_section(model: Any, probe: Probe, config: ModelConfig | None, events: list | None,
                  instrumented: list[str] | None) -> dict[str, Any]:
    """Trace the probe; align it with the events when given; its structural loop nest and the seed fields."""
    from .capture import capture

    tree = capture(probe.fn, probe.args, probe.kwargs, model=model,
                   rebind=rebinds(config, model) if config else ())
    section: dict[str, Any] = {}
    if events is not None:
        section.update(align(events, tree, instrumented or []))
    structural = structural_report(tree, type(model).__name__)
    section.update({"loops": structural.loops, "counts": structural.counts, "seed": seed_fields(tree)})
    return section


def trace_session(model: Any, run: Callable[[], Any], *, config: str | Path | ModelConfig = "auto",
                  probe: Probe | None = None, events: str | Path | None = None,
                  check_versions: bool = True) -> tuple[Report, Any]:
    """Run `run()` instrumented, then trace `probe` (if given) with TorchLens and merge; returns the checked
    report and what `run()` returned."""
    inst = instrument(model, config, events=events, check_versions=check_versions)
    with inst as recorder:
        output = run()
    report = session_report(recorder.events, inst.config, model_class=type(model).__name__,
                            children=static_children(model))
    if probe is not None:
        report.probe = probe_section(model, probe, inst.config, recorder.events,
                                     [a for a, _, _ in inst.bindings])
    return report, output
