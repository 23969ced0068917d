"""Overhead of loopmeta on DeepSeek-OCR 2 generation (random weights, CPU): a benchmark, not a test.

Everything is measured in ONE run of this script and printed as ratios to plain ``model.generate``:

1. plain ``generate`` vs events-only instrumented ``generate`` (``instrument(model, options={"expert_ledger":
   True})``) vs events-only with the expert ledger off. One warm-up of each variant, then INTERLEAVED
   repetitions (plain, instr, instr-no-ledger, plain, ...); medians, min / max and ratios of medians.
   The instrumented time includes entering and leaving ``instrument(...)`` (patching and unpatching).
2. the whole pipeline (``trace_session`` = events over all steps + TorchLens probe of prefill and one decode
   step + merge) and TorchLens over the whole ``generate`` (``capture`` with the same ``max_new_tokens``).
   These are slow: ``--pipeline-reps`` (default 1) repetitions each, no warm-up of their own (the model and
   the TorchLens import are already warm from part 1 / the other variant; TorchLens is imported beforehand).

Run from the repository root::

    python bench/overhead.py                       # tiny and quarter, defaults below
    python bench/overhead.py --sizes tiny --reps 9

Defaults: ``--sizes tiny quarter``, ``--reps`` 5 (tiny) / 3 (quarter), ``--new-tokens 8``, a 1600x1200
synthetic page (6 local crops), ``--threads 1``. One intra-op thread is the default because on a shared
2-core machine two threads fight with other tenants' processes: a quarter-size ``generate`` took 35-62 s with
2 threads and a steady 24 s with 1 while the load average was ~3.5 (use ``--threads 0`` to keep torch's
default). Target: events-only (ledger on) <= 1.05x plain at quarter width.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable

import torch

TARGET = 1.05
DEFAULT_REPS = {"tiny": 5, "quarter": 3}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux/macOS
        return "n/a"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def new_tokens_of(out: Any, prompt_len: int) -> int:
    seqs = out.sequences if hasattr(out, "sequences") else out
    return int(seqs.shape[-1]) - prompt_len


class Printer:
    """Lines and tables on a rich console."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(width=140)

    def line(self, text: str = "") -> None:
        self.console.print(text, markup=False, highlight=False)
        sys.stdout.flush()

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        from rich import box
        from rich.table import Table

        self.line(title)
        t = Table(box=box.ASCII)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i < 2 else "right")
        for r in rows:
            t.add_row(*r)
        self.console.print(t)
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------
# the benchmark of one size
# ---------------------------------------------------------------------------------------------------------
def bench_size(size: str, reps: int, new_tokens: int, pipeline_reps: int, width: int, height: int,
               skip_pipeline: bool, out: Printer) -> dict[str, Any]:
    from loopmeta.builtin_models import deepseek_ocr2_tiny as T
    from loopmeta.sessions.pages import synthetic_page
    from loopmeta.patches import instrument

    t_build, model = timed(lambda: T.build_model(size=size, seed=0))
    model.eval()
    processor = T.build_processor()
    inputs = T.prepare_inputs(processor, synthetic_page(width, height))
    prompt_len = int(inputs["input_ids"].shape[-1])
    crops = int(inputs["pixel_values_local"].shape[0]) if "pixel_values_local" in inputs else 0
    n_params = sum(p.numel() for p in model.parameters())
    out.line(f"[{size}] {n_params / 1e6:.1f} M params, built in {t_build:.1f} s; page {width}x{height}, "
             f"{crops} crops, prompt {prompt_len} tokens, max_new_tokens={new_tokens}, reps={reps}; "
             f"load {loadavg()}")

    def plain() -> Any:
        return model.generate(**inputs, max_new_tokens=new_tokens)

    events_seen: dict[str, int] = {}

    def instr(ledger: bool) -> Callable[[], Any]:
        name = "events" if ledger else "events_no_ledger"

        def run() -> Any:
            with instrument(model, options={"expert_ledger": ledger}) as recorder:
                result = model.generate(**inputs, max_new_tokens=new_tokens)
            events_seen[name] = len(recorder.events)
            return result

        return run

    variants: dict[str, Callable[[], Any]] = {
        "plain": plain,
        "events": instr(True),
        "events_no_ledger": instr(False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs: dict[str, Any] = {}
    with torch.no_grad():
        for name, fn in variants.items():  # one warm-up each
            t, outputs[name] = timed(fn)
            out.line(f"[{size}]   warm-up {name:<17} {t:8.2f} s")
        for r in range(reps):  # interleaved
            for name, fn in variants.items():
                t, o = timed(fn)
                times[name].append(t)
            out.line(f"[{size}]   rep {r + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
                     + f"; load {loadavg()}")
    same = all(torch.equal(outputs["plain"], outputs[k]) for k in ("events", "events_no_ledger"))
    produced = new_tokens_of(outputs["plain"], prompt_len)

    result: dict[str, Any] = {"size": size, "reps": reps, "new_tokens": new_tokens, "produced": produced,
                              "times": times, "events": events_seen, "same_output": same,
                              "params": n_params, "crops": crops, "prompt_len": prompt_len}
    if not skip_pipeline:
        result.update(pipeline_part(model, inputs, size, new_tokens, pipeline_reps, out))
    return result


def pipeline_part(model: Any, inputs: Any, size: str, new_tokens: int, pipeline_reps: int,
                  out: Printer) -> dict[str, Any]:
    """Part 2: the whole pipeline (trace_session with a 2-token probe) and TorchLens over the whole generate."""
    import torchlens  # noqa: F401  (imported here so that its import time is not in the first timed call)

    from loopmeta.merge.calltree import counts, from_trace
    from loopmeta.probe.capture import capture
    from loopmeta.pipeline import Probe, trace_session

    input_ids = inputs["input_ids"]
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}

    probe = Probe(model.generate, (input_ids,), {**rest, "max_new_tokens": 2})
    pipe_times: list[float] = []
    cap_times: list[float] = []
    info: dict[str, Any] = {}
    with torch.no_grad():
        for r in range(pipeline_reps):
            t, (report, _) = timed(lambda: trace_session(
                model, lambda: model.generate(**inputs, max_new_tokens=new_tokens), probe=probe))
            pipe_times.append(t)
            out.line(f"[{size}]   pipeline (trace_session) rep {r + 1}/{pipeline_reps}: {t:.2f} s; load {loadavg()}")
            info["report_type"] = type(report).__name__
            t, tree = timed(lambda: capture(model.generate, (input_ids,), {**rest, "max_new_tokens": new_tokens},
                                            model=model))
            cap_times.append(t)
            info["tl_calls"] = sum(counts(from_trace(tree)).values())
            out.line(f"[{size}]   TorchLens capture(generate, {new_tokens} tokens) rep {r + 1}/{pipeline_reps}: "
                     f"{t:.2f} s ({info['tl_calls']} module calls); load {loadavg()}")
    return {"pipeline": pipe_times, "capture": cap_times, "info": info}


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "quarter"], choices=["tiny", "quarter"])
    ap.add_argument("--reps", type=int, default=None,
                    help="interleaved repetitions per variant (default 5 for tiny, 3 for quarter)")
    ap.add_argument("--new-tokens", type=int, default=8, help="max_new_tokens for every timed generate")
    ap.add_argument("--pipeline-reps", type=int, default=1, help="repetitions of trace_session and capture")
    ap.add_argument("--skip-pipeline", action="store_true", help="only part 1 (plain vs events-only)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1200)
    args = ap.parse_args(argv)

    logging.getLogger("loopmeta").setLevel(logging.ERROR)  # the "config 'auto' picked ..." notice
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import transformers

    from loopmeta.builtin_models import deepseek_ocr2_tiny as T

    if not T.is_available():
        print("transformers has no deepseek_ocr2 (needs transformers 5.x); nothing to benchmark")
        return 1
    try:
        import torchlens

        tl_version = getattr(torchlens, "__version__", "?")
    except ImportError:
        tl_version = "not installed"

    out = Printer()
    cmd = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv])
    out.line(f"command      : {cmd}")
    out.line(f"date         : {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    out.line(f"python/torch : {platform.python_version()} / torch {torch.__version__} / transformers "
             f"{transformers.__version__} / torchlens {tl_version}")
    out.line(f"machine      : {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
             f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; load average {loadavg()}")
    out.line("")

    t_all = time.perf_counter()
    results = []
    for size in args.sizes:
        reps = args.reps if args.reps is not None else DEFAULT_REPS[size]
        results.append(bench_size(size, reps, args.new_tokens, args.pipeline_reps, args.width, args.height,
                                  args.skip_pipeline, out))
        out.line("")

    summarize(results, args, out)
    out.line(f"total wall time {time.perf_counter() - t_all:.0f} s; load average at end {loadavg()}")
    return 0


def summarize(results: list[dict[str, Any]], args: argparse.Namespace, out: Printer) -> None:
    """The result tables, the output check and the target verdict."""
    rows1 = []
    rows2 = []
    for res in results:
        med = {k: statistics.median(v) for k, v in res["times"].items()}
        base = med["plain"]
        for name, label in (("plain", "plain generate"), ("events", "events-only, ledger on"),
                            ("events_no_ledger", "events-only, ledger off")):
            v = res["times"][name]
            rows1.append([res["size"], label, str(len(v)), f"{med[name]:.3f}", f"{min(v):.3f}", f"{max(v):.3f}",
                          f"{med[name] / base:.3f}x", str(res["events"].get(name, "-"))])
        if "pipeline" in res:
            pipe = statistics.median(res["pipeline"])
            cap = statistics.median(res["capture"])
            rows2.append([res["size"], "plain generate (median, part 1)", str(len(res["times"]["plain"])),
                          f"{base:.2f}", "1.00x", f"{base / cap:.2f}x"])
            rows2.append([res["size"], "pipeline: trace_session + probe(2 tokens)", str(len(res["pipeline"])),
                          f"{pipe:.2f}", f"{pipe / base:.2f}x", f"{pipe / cap:.2f}x"])
            rows2.append([res["size"], f"TorchLens capture(generate, {res['new_tokens']} tokens)",
                          str(len(res["capture"])), f"{cap:.2f}", f"{cap / base:.2f}x", "1.00x"])

    out.table("1. events-only instrumentation vs plain generate (interleaved; seconds; ratio of medians)",
              ["size", "variant", "reps", "median", "min", "max", "vs plain", "events"], rows1)
    if rows2:
        out.table("2. whole pipeline vs plain and vs TorchLens over the whole generate (seconds)",
                  ["size", "variant", "reps", "time", "vs plain", "vs TorchLens"], rows2)
    out.line("")
    for res in results:
        out.line(f"[{res['size']}] {res['params'] / 1e6:.1f} M params, prompt {res['prompt_len']} tokens "
                 f"({res['crops']} crops), max_new_tokens={res['new_tokens']} (generated {res['produced']}), "
                 f"reps={res['reps']}; instrumented outputs identical to plain: {'yes' if res['same_output'] else 'NO'}")
    for res in results:
        if res["size"] != "quarter":
            continue
        ratio = statistics.median(res["times"]["events"]) / statistics.median(res["times"]["plain"])
        ratio_off = statistics.median(res["times"]["events_no_ledger"]) / statistics.median(res["times"]["plain"])
        verdict = "MET" if ratio <= TARGET else "NOT MET"
        out.line(f"target: events-only <= {TARGET:.2f}x plain generate at quarter width: {verdict} "
                 f"(ledger on {ratio:.3f}x, ledger off {ratio_off:.3f}x)")
    if "quarter" not in args.sizes:
        out.line(f"target (events-only <= {TARGET:.2f}x plain at quarter width): not checked, quarter not run")


if __name__ == "__main__":
    sys.exit(main())
