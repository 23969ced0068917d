"""A realistic session end to end: the built-in tiny DeepSeek-OCR 2 generates 2048 tokens (a 640x480 page, every
token generated) events-only with the events file on, then the file is merged: a benchmark, not a test.

Each stage runs in its own fresh process, which prints its wall time and its peak resident memory (sampled every
2 ms) above its resident memory when the stage starts; the table adds the events and the file size.

    python bench/long_session.py                 # 2048 tokens
    python bench/long_session.py --tokens 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from merge_scale import RssPeak  # noqa: E402  (the benchmarks' one memory sampler)


def record(path: str, tokens: int) -> dict:
    import torch

    from loopmeta import instrument
    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.sessions.pages import synthetic_page

    torch.set_num_threads(1)
    model = build_model("tiny")
    inputs = prepare_inputs(build_processor(), synthetic_page(640, 480))
    with torch.inference_mode():  # a plain run of the same session, for the ratio
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        plain = time.perf_counter() - start
    sampler = RssPeak()
    start = time.perf_counter()
    with instrument(model, events=path) as recorder, torch.inference_mode():
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return {"seconds": time.perf_counter() - start, "plain": plain, "bytes": sampler.stop(),
            "events": len(recorder.table), "steps": recorder.steps}


def merge(path: str) -> dict:
    from loopmeta.events.stream import read_events
    from loopmeta.model_configs import load_config
    from loopmeta.report.build import session_report

    config = load_config("deepseek_ocr2_hf")
    sampler = RssPeak()
    start = time.perf_counter()
    header, table, end = read_events(path)
    report = session_report(table, config, model_class=header.model_class, end=end,
                            container_sizes=header.container_sizes)
    return {"seconds": time.perf_counter() - start, "bytes": sampler.stop(), "events": len(table),
            "steps": len(report.steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--stage", choices=["record", "merge"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        result = record(args.path, args.tokens) if args.stage == "record" else merge(args.path)
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiny DeepSeek-OCR 2, 640x480 page, generate({args.tokens}), events file on")
    for col in ("stage", "wall s", "events", "steps", "file MB", "peak MB", "note"):
        table.add_column(col, justify="left" if col in ("stage", "note") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "events.jsonl")
        for stage in ("record", "merge"):
            out = subprocess.run([sys.executable, __file__, "--stage", stage, "--path", path, "--tokens",
                                  str(args.tokens)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            note = (f"plain generate {r['plain']:.2f} s: {r['seconds'] / r['plain']:.3f}x" if stage == "record"
                    else f"{r['seconds'] / r['events'] * 1e6:.1f} us/event")
            table.add_row(stage, f"{r['seconds']:.2f}", f"{r['events']:,}", str(r["steps"]),
                          f"{Path(path).stat().st_size / 1e6:.2f}", f"{r['bytes'] / 1e6:.1f}", note)
    Console().print(table)


if __name__ == "__main__":
    main()
