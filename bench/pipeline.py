"""The whole pipeline against plain `generate`: a benchmark, not a test.

On the built-in tiny DeepSeek-OCR 2 and the main job's page (1600x1200, 6 crops, a 1125-token prompt), measured in
one run, each variant after one warm-up, interleaved:

- plain `generate(N)` (every token generated);
- the pipeline, `trace_session` with `probe="auto"`: events over every step, then TorchLens on a repeat of the
  session's first `generate` shortened to the prefill and three decode steps (`PROBE_STEPS`), then the merge, the
  alignment and the work. Its parts are timed inside the same runs: the instrumented session (the events), the
  TorchLens capture of the probe, and the rest (the report from the events, the alignment, the probe's loops, seeds
  and GEMMs, the work);
- TorchLens over the whole `generate(N)` (what the pipeline replaces).

    python bench/pipeline.py               # N = 32
    python bench/pipeline.py --tokens 128

Target (issue 9): the pipeline at most 2x plain `generate(32)`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any, Callable

import torch

PARTS = ("  part: events (the instrumented session)", "  part: TorchLens capture of the probe",
         "  part: merge, alignment, work (the rest)")


def timed_pipeline(model: Any, generate: Callable[[], Any], times: dict[str, list[float]]) -> None:
    """One `trace_session` run; its total and its parts appended to `times` (the session: from its start to the
    report's phase; the capture: `capture` itself; the rest: what remains)."""
    from loopmeta import pipeline
    from loopmeta.common.attributes import swapped

    marks: dict[str, float] = {}
    real_capture = pipeline.capture

    def capture(*args: Any, **kwargs: Any) -> Any:
        marks["capture_start"] = time.perf_counter()
        try:
            return real_capture(*args, **kwargs)
        finally:
            marks["capture_end"] = time.perf_counter()

    def progress(what: str, recorder: Any = None) -> None:
        if what.startswith("building the report"):  # the phase after the session (pipeline.trace_session)
            marks["session_end"] = time.perf_counter()

    start = time.perf_counter()
    with swapped((pipeline, "capture", capture)):
        pipeline.trace_session(model, generate, probe="auto", progress=progress)
    total = time.perf_counter() - start
    session, probe = marks["session_end"] - start, marks["capture_end"] - marks["capture_start"]
    for name, value in zip(("pipeline (trace_session, probe auto)", *PARTS),
                           (total, session, probe, total - session - probe)):
        times.setdefault(name, []).append(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table

    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.model_configs.hf import generate_probe
    from loopmeta.probe.capture import capture
    from loopmeta.sessions.pages import load_image

    model = build_model("tiny")
    inputs = prepare_inputs(build_processor(), load_image(None))
    n = args.tokens

    def generate(tokens: int = n) -> Any:
        return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    def whole() -> Any:  # TorchLens over generate(N), called as the probe calls it (input_ids positional)
        args, kwargs = generate_probe((), {**inputs, "max_new_tokens": n, "do_sample": False}, n)
        return capture(model.generate, args, {**kwargs, "min_new_tokens": n}, model=model)

    times: dict[str, list[float]] = {}
    variants: dict[str, Callable[[], Any]] = {
        "plain generate": generate,
        "pipeline": lambda: timed_pipeline(model, generate, times),
        f"TorchLens over the whole generate({n})": whole,
    }
    with torch.no_grad():
        for fn in variants.values():
            fn()
        times.clear()
        for _ in range(args.reps):
            for name, fn in variants.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                if name != "pipeline":
                    times.setdefault(name, []).append(time.perf_counter() - start)
    plain = statistics.median(times["plain generate"])
    table = Table(title=f"pipeline vs plain generate({n}), tiny, 1600x1200 page; {args.reps} interleaved reps")
    for col in ("variant", "median s", "min s", "vs plain"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    order = ["plain generate", "pipeline (trace_session, probe auto)", *PARTS, f"TorchLens over the whole generate({n})"]
    for name in order:
        ts = times[name]
        table.add_row(name, f"{statistics.median(ts):.2f}", f"{min(ts):.2f}", f"{statistics.median(ts) / plain:.2f}x")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
