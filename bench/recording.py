"""What events-only recording costs on top of plain `generate`: a benchmark, not a test.

Two sessions of the built-in random-weight DeepSeek-OCR 2, measured in one run:

- decode-dominated: a 640x480 page (no crops, 261-token prompt), `generate` of `--decode-tokens` (256) tokens,
  all generated (`min_new_tokens`);
- prefill-dominated: a 1600x1200 page (6 crops, 1125-token prompt), `generate` of 8 tokens.

Each session runs plain, with events in memory (`with instrument(model)`), and with the events file on (what
`run_traced.py` does), interleaved (plain, memory, file, plain, ...) after one warm-up of each. The per-event cost is
(variant - plain) / events on the fastest repetition of each; the ratio is of the medians. The outputs of every
variant are checked identical to plain; where they differ, a control without loopmeta (plain with a 2 ms host sleep
after each MoE router call) says whether host timing alone changes them (on a GPU it can). Instrumenting and
uninstrumenting are inside the timed block.

    python bench/recording.py                                   # tiny, CPU, one torch thread
    python bench/recording.py --size full --device cuda --dtype bfloat16 --reps 7   # on a GPU
    python bench/recording.py --no-expert-ledger                # without the ledger's host read per MoE call

Then the recorder's own cost: replayed outside the model on the calls of one decode step, and timed inside the
decode session (what the recorder's code costs while the model's code competes for the CPU's caches).

Targets (issue 9): at most 5 us per event in memory and 8 us with the file; the file variant at most 1.05x plain on
the decode-dominated session (also on a GPU with the full-size model).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

SESSIONS = {"decode": (640, 480), "prefill": (1600, 1200)}
TARGETS = {"memory": 5.0, "file": 8.0}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_session(model: Any, inputs: Any, new_tokens: int, reps: int, device: str, tmp: Path,
                  options: dict[str, Any]) -> dict[str, Any]:
    from loopmeta.patches import instrument

    events: dict[str, int] = {}

    def generate() -> Any:
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync(device)
        return out

    def recorded(path: Path | None) -> Callable[[], Any]:
        def run() -> Any:
            with instrument(model, events=path, options=options) as recorder:
                out = generate()
            events["n"] = len(recorder.table)
            return out
        return run

    variants = {"plain": generate, "memory": recorded(None), "file": recorded(tmp / "events.jsonl")}
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    with torch.inference_mode():
        for name, fn in variants.items():
            outputs[name] = fn()  # warm-up
        for _ in range(reps):
            for name, fn in variants.items():
                gc.collect()
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    same = all(torch.equal(outputs["plain"], outputs[k]) for k in ("memory", "file"))
    size = (tmp / "events.jsonl").stat().st_size
    control = None if same else torch.equal(outputs["plain"], delayed(model, generate))
    return {"times": times, "events": events["n"], "same": same, "file_bytes": size, "control_same": control}


def delayed(model: Any, generate: Callable[[], Any]) -> Any:
    """The output of a plain `generate` whose host sleeps 2 ms after each MoE router call (bench/perturbations.py's
    hook; no loopmeta): the control for outputs that differ on a GPU, where the model's numerics can depend on host
    timing alone (docs/benchmarks.md#outputs-on-a-gpu)."""
    from perturbations import variants  # beside this file

    with variants(model)["hook on each router: sleep 2 ms"](), torch.inference_mode():
        return generate()


def recorder_alone(model: Any, inputs: Any, options: dict[str, Any], step: int = 5,
                   number: int = 2000) -> dict[str, float]:
    """The recorder's own cost per call (enter + extractors + exit), replayed outside the model on the real calls of
    one decode step (the step's own call aside): what a call costs when the model's work does not share the CPU's
    caches with it."""
    import timeit

    from loopmeta.patches import instrument
    from loopmeta.patches.recorder import Recorder

    calls: list[tuple] = []
    with instrument(model, options=options) as recorder, torch.inference_mode():
        enter, exit_ = recorder.enter, recorder.exit
        started: dict[int, tuple] = {}

        def spy_enter(binding: Any, module: Any, forward: Any, args: tuple, kwargs: dict) -> Any:
            call, token = enter(binding, module, forward, args, kwargs)
            started[id(call)] = (binding, module, forward, args, kwargs)
            return call, token

        def spy_exit(call: Any, token: Any, result: Any, error: Any, on_exit: Any) -> None:
            if call.step == step:
                calls.append((*started[id(call)], result))
            exit_(call, token, result, error, on_exit)

        recorder.enter, recorder.exit = spy_enter, spy_exit
        model.generate(**inputs, max_new_tokens=step + 1, min_new_tokens=step + 1, do_sample=False)
    replay = Recorder(recorder.header, recorder.table.nodes, options=options)
    replay.steps = step
    per_role: dict[str, list[float]] = {}
    root = next(c for c in calls if c[0].target.step)
    outer, outer_token = replay.enter(*root[:5])  # the others run inside a step, as they do in the model
    for binding, module, forward, args, kwargs, result in calls:
        if binding.target.step:
            continue

        def one() -> None:
            call, token = replay.enter(binding, module, forward, args, kwargs)
            replay.exit(call, token, result, None, binding.on_exit)
        seconds = min(timeit.repeat(one, number=number, repeat=3)) / number
        per_role.setdefault(binding.target.role, []).append(seconds * 1e6)
    replay.exit(outer, outer_token, root[5], None, root[0].on_exit)
    return {role: sum(v) / len(v) for role, v in per_role.items()} | {
        "mean over the step's calls": sum(sum(v) for v in per_role.values()) / sum(map(len, per_role.values()))}


def recorder_inside(model: Any, inputs: Any, new_tokens: int, options: dict[str, Any], reps: int = 5) -> float:
    """The recorder's own time inside the run, per event: `enter` and `exit` (extractors, metadata, interning, the
    step's writes) timed around each call with `perf_counter_ns`, instrumenting and uninstrumenting included; the
    best of `reps` sessions (the timers themselves add up to about half a microsecond per call)."""
    from loopmeta.patches import instrument

    now, best = time.perf_counter_ns, float("inf")
    with torch.inference_mode():
        for _ in range(reps):
            spent = [0]
            start = now()
            inst = instrument(model, options=options)
            recorder = inst.recorder
            enter, exit_ = recorder.enter, recorder.exit

            def timed_enter(*args: Any) -> Any:
                t = now()
                try:
                    return enter(*args)
                finally:
                    spent[0] += now() - t

            def timed_exit(*args: Any) -> None:
                t = now()
                try:
                    exit_(*args)
                finally:
                    spent[0] += now() - t
            recorder.enter, recorder.exit = timed_enter, timed_exit
            spent[0] += now() - start
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            start = now()
            inst.uninstrument()
            spent[0] += now() - start
            best = min(best, spent[0] / len(recorder.table) / 1e3)
    return best


def table_rows(r: dict[str, Any], label: str) -> list[list[str]]:
    """One session's rows of the printed table: median, min, ratio of medians, us/event of the fastest runs."""
    plain_med, plain_min = statistics.median(r["times"]["plain"]), min(r["times"]["plain"])
    rows = []
    for variant, ts in r["times"].items():
        med, low = statistics.median(ts), min(ts)
        per = (low - plain_min) / r["events"] * 1e6
        target = TARGETS.get(variant)
        verdict = "-" if target is None else f"{'met' if per <= target else 'missed'} ({target:g})"
        rows.append([label if variant == "plain" else "", variant, f"{med:.3f}", f"{low:.3f}",
                     f"{med / plain_med:.3f}x", str(r["events"]), "-" if variant == "plain" else f"{per:.1f}", verdict,
                     f"{r['file_bytes'] / 1e6:.2f}" if variant == "file" else "",
                     "" if variant == "plain" else str(r["same"])])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "quarter", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--prefill-tokens", type=int, default=8)
    parser.add_argument("--sessions", nargs="+", default=list(SESSIONS), choices=list(SESSIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--no-expert-ledger", action="store_true",
                        help="instrument without the expert ledger (its host read per MoE call): that read's share")
    args = parser.parse_args()
    options = {"expert_ledger": False} if args.no_expert_ledger else {}
    if args.threads > 0 and args.device == "cpu":
        torch.set_num_threads(args.threads)
    import transformers
    from rich.console import Console
    from rich.table import Table

    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.sessions.pages import synthetic_page

    console = Console(width=140)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none"
    now = datetime.datetime.now().isoformat(timespec="minutes")
    console.print(f"command: python {' '.join(sys.argv)}\ndate: {now}\nmachine: {platform.machine()} {os.cpu_count()} "
                  f"CPUs, GPU {gpu}; python {platform.python_version()}, torch {torch.__version__}, transformers "
                  f"{transformers.__version__}; torch threads {torch.get_num_threads()}", highlight=False)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.size, dtype=dtype, device=args.device)
    processor = build_processor()
    table = Table(title=f"events-only recording vs plain generate ({args.size}, {args.device}, {args.dtype}; "
                        f"{args.reps} interleaved reps; seconds{'; no expert ledger' if options else ''})")
    for col in ("session", "variant", "median", "min", "vs plain", "events", "us/event", "target", "file MB",
                "same output"):
        table.add_column(col, justify="left" if col in ("session", "variant") else "right")
    controls: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sessions:
            inputs = prepare_inputs(processor, synthetic_page(*SESSIONS[name]), dtype=dtype).to(args.device)
            tokens = args.decode_tokens if name == "decode" else args.prefill_tokens
            r = bench_session(model, inputs, tokens, args.reps, args.device, Path(tmp), options)
            if r["control_same"] is not None:
                controls[name] = r["control_same"]
            for row in table_rows(r, f"{name} ({inputs['input_ids'].shape[1]}-token prompt, {tokens} new)"):
                table.add_row(*row)
    console.print(table)
    for name, same_under_delay in controls.items():
        console.print(f"{name}: instrumented outputs differ from plain; control, plain with a 2 ms host sleep after "
                      f"each MoE router call and no loopmeta: {'same as plain' if same_under_delay else 'differs too'}",
                      highlight=False)
    inputs = prepare_inputs(processor, synthetic_page(*SESSIONS["decode"]), dtype=dtype).to(args.device)
    print_recorder(console, model, inputs, args.decode_tokens, options)


def print_recorder(console: Any, model: Any, inputs: Any, tokens: int, options: dict[str, Any]) -> None:
    """The recorder's own cost: replayed alone per role, and timed inside the decode session."""
    from rich.table import Table

    alone = Table(title="the recorder alone: us per call, replayed on the calls of decode step 5 (no model work)")
    alone.add_column("role")
    alone.add_column("us/call", justify="right")
    for role, us in recorder_alone(model, inputs, options).items():
        alone.add_row(role, f"{us:.1f}")
    console.print(alone)
    inside = recorder_inside(model, inputs, tokens, options)
    console.print(f"the recorder inside the decode session (enter + exit, timed around each call): {inside:.1f} us "
                  "per event", highlight=False)


if __name__ == "__main__":
    main()
