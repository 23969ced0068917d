"""Time per stage and step from a torch.profiler (Kineto) trace of a session recorded with `profile=True`, whose
calls carry loopmeta labels (events/labels.py); and running a session under the profiler (`run_traced.py --profile`).

Semantics of `profile_table`: only the CPU ranges of the labels count (`"cat": "user_annotation"`; a GPU copy of a
range, `gpu_user_annotation`, is skipped). Per (stage, step), `calls` counts every label and `total_us` sums the
durations of the stage's outermost labels only: a label inside an open label of the same stage on the same thread
(a MoE block inside its decoder layer) adds no time, so nothing is counted twice within a stage. Labels of different
stages can nest (the stage-less step `-` holds every other), so rows of different stages overlap in time and do not
add up to the session. GPU kernels a call launched nest under its label in the Kineto trace (their time is not in
`total_us`, which is host time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..common.files import write_atomically
from ..errors import ReportFileError
from ..events.labels import PREFIX, parse

CPU_RANGE = "user_annotation"
"""The category Kineto gives a `record_function` range on the host."""


@dataclass(frozen=True)
class ProfileRow:
    """Host time of one stage in one step: `calls` labels, `total_us` microseconds in its outermost labels."""

    stage: str
    step: int
    calls: int
    total_us: float


def _ranges(source: str | Path | Any) -> dict[tuple[Any, Any], list[tuple[float, float, str, int]]]:
    """The host ranges of loopmeta labels per thread, (ts, dur, stage, step) in microseconds, from a trace file or a
    finished `torch.profiler.profile` (its `events()`: a profiler exports its trace only once)."""
    found: list[tuple[Any, float, float, str]]  # (thread, ts, dur, name)
    if isinstance(source, (str, Path)):
        found = [((e.get("pid"), e.get("tid")), float(e["ts"]), float(e["dur"]), e["name"])
                 for e in json.loads(Path(source).read_text(encoding="utf-8")).get("traceEvents", [])
                 if e.get("ph") == "X" and e.get("cat") == CPU_RANGE and str(e.get("name", "")).startswith(PREFIX)]
    else:
        found = [((None, e.thread), e.time_range.start, e.time_range.end - e.time_range.start, e.name)
                 for e in source.events() if e.device_type.name == "CPU" and e.name.startswith(PREFIX)]
    ranges: dict[tuple[Any, Any], list[tuple[float, float, str, int]]] = {}
    for thread, ts, dur, name in found:
        parsed = parse(name)
        if parsed is not None:
            ranges.setdefault(thread, []).append((ts, dur, parsed[0], parsed[2]))
    return ranges


def profile_table(source: str | Path | Any) -> list[ProfileRow]:
    """Rows per (stage, step), sorted by step then stage, from a trace file or a finished profiler."""
    ranges = _ranges(source)
    calls: dict[tuple[str, int], int] = {}
    totals: dict[tuple[str, int], float] = {}
    for thread in ranges.values():
        open_: list[tuple[float, str]] = []  # (end, stage) of the labels enclosing the current one
        for start, dur, stage, step in sorted(thread, key=lambda r: (r[0], -r[1])):
            while open_ and open_[-1][0] <= start:
                open_.pop()
            key = (stage, step)
            calls[key] = calls.get(key, 0) + 1
            totals.setdefault(key, 0.0)
            if all(s != stage for _, s in open_):
                totals[key] += dur
            open_.append((start + dur, stage))
    return [ProfileRow(stage, step, calls[(stage, step)], totals[(stage, step)])
            for stage, step in sorted(calls, key=lambda k: (k[1], k[0]))]


def write_table(rows: list[ProfileRow], path: Path) -> Path:
    """The rows as CSV (stage, step, calls, total_us), written whole or not at all."""
    lines = ["stage,step,calls,total_us"] + [f"{r.stage},{r.step},{r.calls},{r.total_us:.3f}" for r in rows]
    try:
        write_atomically(path, "\n".join(lines) + "\n")
    except OSError as exc:
        raise ReportFileError(f"cannot write the profile table to {path}: {exc}. Pass an output folder you can "
                              "write (--out).") from None
    return path


def profiled(run: Callable[[], Any], path: Path, cuda: bool = False) -> Callable[[], Any]:
    """`run` that runs under `torch.profiler.profile` (host activity, and CUDA when `cuda`) and exports the
    profiler's trace to `path` when it returns."""
    def profiled_run() -> Any:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            out = run()
        prof.export_chrome_trace(str(path))
        return out
    return profiled_run
