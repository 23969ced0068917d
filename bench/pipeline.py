"""The whole pipeline against plain `generate`: a benchmark, not a test.

On the built-in tiny DeepSeek-OCR 2 and the main job's page (1600x1200, 6 crops, a 1125-token prompt), measured in
one run, each variant after one warm-up, interleaved:

- plain `generate(N)` (every token generated);
- the pipeline, `trace_session` with `probe="auto"`: events over every step, then TorchLens on a repeat of the
  session's first `generate` shortened to the prefill and one decode step, then the merge and the alignment;
- the pipeline's parts: the events-only session and the probe (`capture` of the shortened generate);
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
    from loopmeta.patches import instrument
    from loopmeta.pipeline import trace_session
    from loopmeta.probe.capture import capture
    from loopmeta.sessions.pages import load_image

    model = build_model("tiny")
    inputs = prepare_inputs(build_processor(), load_image(None))
    n = args.tokens

    def generate(tokens: int = n) -> Any:
        return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    def events_only() -> Any:
        with instrument(model):
            return generate()

    def traced(steps: int) -> Any:  # TorchLens over generate, called as the probe calls it (input_ids positional)
        args, kwargs = generate_probe((), {**inputs, "max_new_tokens": n, "do_sample": False}, steps)
        return capture(model.generate, args, {**kwargs, "min_new_tokens": steps}, model=model)

    variants: dict[str, Callable[[], Any]] = {
        "plain generate": generate,
        "pipeline (trace_session, probe auto)": lambda: trace_session(model, generate, probe="auto"),
        "  part: events-only session": events_only,
        "  part: TorchLens probe (prefill + 1 decode step)": lambda: traced(2),
        f"TorchLens over the whole generate({n})": lambda: traced(n),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():
            fn()
        for _ in range(args.reps):
            for name, fn in variants.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain generate"])
    table = Table(title=f"pipeline vs plain generate({n}), tiny, 1600x1200 page; {args.reps} interleaved reps")
    for col in ("variant", "median s", "min s", "vs plain"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, ts in times.items():
        table.add_row(name, f"{statistics.median(ts):.2f}", f"{min(ts):.2f}", f"{statistics.median(ts) / plain:.2f}x")
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
