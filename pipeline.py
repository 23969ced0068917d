"""The whole pipeline, from a model and a session to a checked report: events over every step, a TorchLens probe
of the first steps, alignment, loop inference, exactness. `trace_structure` is the config-free path.

    report, output = trace_session(model, lambda: model.generate(**inputs, max_new_tokens=64), probe="auto")
    write_report(report, "out/")
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import wrapt

from .common.attributes import Swap
from .errors import ConfigError
from .events.table import EventTable
from .merge.align import align
from .probe.capture import capture
from .probe.gemms import gemm_table
from .probe.seed import seed_fields
from .model_configs.config import ModelConfig
from .patches.instrumentation import Instrumentation, choose_config
from .report.build import session_report, structural_report
from .report.schema import Report
from .work.section import work_from_probe

PROBE_STEPS = 4  # prefill + three decode steps: two whole ones show how a step's shapes grow, and the last one how
# a session's last step stops (work/steps.py)


@dataclass
class Probe:
    """What TorchLens traces: `fn(*args, **kwargs)`, e.g. `model.generate` for 4 new tokens (prefill + three decode
    steps) or `model` itself for a single forward. It must repeat the session's first steps."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class FirstCall:
    """Remembers the arguments of the first call of `cls.<method>` while active (a class-level wrapper, restored on
    exit): how the probe learns what a session called, even from inside a vendor helper."""

    def __init__(self, cls: type, method: str):
        self.cls, self.method = cls, method
        self.args: tuple[Any, ...] | None = None
        self.kwargs: dict[str, Any] = {}
        self._swap: Swap | None = None

    def _remember(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if self.args is None:
            self.args, self.kwargs = args, dict(kwargs)
        return wrapped(*args, **kwargs)

    def __enter__(self) -> "FirstCall":
        self._swap = Swap.apply(self.cls, self.method, wrapt.FunctionWrapper(getattr(self.cls, self.method),
                                                                             self._remember))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._swap.restore()


def _rebinds(config: ModelConfig, model: Any) -> list[tuple[object, str, object]]:
    return [(sys.modules[type(model.get_submodule(r.module_of)).__module__], r.name, config.function(r.replacement))
            for r in config.rebind]


def probe_section(model: Any, probe: Probe, config: ModelConfig | None, events: EventTable | list | None,
                  stage_of: dict[str, str | None] | None) -> tuple[dict[str, Any], Any]:
    """Trace the probe; align it with the events when given (`stage_of`: instrumented address -> stage); its
    structural loop nest, the seed fields and the GEMM shapes per step and stage; and the trace itself."""
    tree = capture(probe.fn, probe.args, probe.kwargs, model=model, rebind=_rebinds(config, model) if config else ())
    section: dict[str, Any] = {}
    step = config.step_target.pattern if config and config.step_target else ""
    if events is not None:
        section.update(align(events, tree, list(stage_of or {}), step))
    structural = structural_report(tree, model)
    section.update({"loops": structural.loops, "counts": structural.counts, "seed": seed_fields(tree),
                    "gemms": gemm_table(tree, model, stage_of or {}, step)})
    return section, tree


def _auto_probe(config: ModelConfig, first: FirstCall, model: Any, steps: int) -> tuple[Probe | None, str]:
    """The probe that repeats the session's first call of the probe method, or None and why not."""
    if first.args is None:
        return None, f"the session never called {first.method}()"
    if not steps:
        return None, "the session ran no step"
    repeated = config.function(config.session.probe)(first.args, first.kwargs, min(PROBE_STEPS, steps))
    if repeated is None:
        return None, f"the session's {first.method}() call cannot be repeated for TorchLens (no positional input)"
    return Probe(getattr(model, first.method), *repeated), ""


def trace_session(model: Any, run: Callable[[], Any], *, config: str | Path | ModelConfig = "auto",
                  probe: Probe | str | None = None, events: str | Path | None = None,
                  check_versions: bool = True, options: dict[str, Any] | None = None,
                  profile: bool = False, progress: Callable[..., None] | None = None) -> tuple[Report, Any]:
    """Run `run()` instrumented, then trace `probe` with TorchLens and merge; return the checked report and what
    `run()` returned. `probe="auto"` repeats the session's first call of the config's probe method (`generate`),
    shorter (prefill + three decode steps), as the config's `[session] probe` function says. `profile`: label each
    recorded call of `run()` for torch.profiler (docs/profiling.md); the probe runs unlabelled. `progress(what,
    recorder=None)` is told each phase as it starts (`sessions.progress.LiveProgress` shows it)."""
    if isinstance(probe, str) and probe != "auto":
        raise ValueError(f"probe must be a Probe, 'auto' or None, got {probe!r}")
    chosen = choose_config(model, config)
    spec = chosen.session
    if probe == "auto" and not (spec.probe_method and spec.probe):
        raise ConfigError(f"config {chosen.name!r} declares no [session] probe_method and probe: pass "
                          "probe=Probe(...) or probe=None")
    inst = Instrumentation(model, chosen, events=events, check_versions=check_versions, options=options,
                           profile=profile)
    first = FirstCall(type(model), spec.probe_method) if probe == "auto" else None
    say = progress or (lambda what, recorder=None: None)
    with inst as recorder, (first or contextlib.nullcontext()):
        say("running the instrumented session", recorder)
        output = run()
    say("building the report from the events")
    report = session_report(recorder.table, inst.config, model_class=type(model).__name__, end=recorder.end,
                            container_sizes=recorder.header.container_sizes)
    if recorder.write_failed:
        report.notes.append(f"the events file is incomplete ({recorder.write_failed}); this report is built from "
                            "the events kept in memory")
    if probe == "auto":
        probe, why_not = _auto_probe(inst.config, first, model, recorder.steps)
        if probe is None:
            report.notes.append(f"no TorchLens probe: {why_not}")
    if probe is not None:
        stage_of = {b.address: b.target.stage for b in inst.bindings}
        say(f"TorchLens probe of the first {min(PROBE_STEPS, recorder.steps)} steps, aligned with the events")
        report.probe, tree = probe_section(model, probe, inst.config, recorder.table, stage_of)
        say("counting the work (FLOPs and bytes) of the probed steps")
        step = inst.config.step_target.pattern if inst.config.step_target else ""
        report.work = work_from_probe(tree, stage_of, step, {s["step"]: s["phase"] for s in report.steps},
                                      report.moe)
    return report, output


def trace_structure(fn: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None, *, model: Any = None) -> Report:
    """Config-free mode for any PyTorch model: trace `fn(*args, **kwargs)` once with TorchLens and return the exact
    loop nest of every module (no events, no labels). `fn` is a module or a bound method of one; `model` (default:
    `fn` or its owner) defines the addresses."""
    model = model if model is not None else getattr(fn, "__self__", fn)
    return structural_report(capture(fn, args, kwargs, model=model), model)
