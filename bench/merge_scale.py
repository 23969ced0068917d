"""Merge throughput and memory from 10^4 to 10^7 events: a benchmark, not a test.

One real session is recorded first (the built-in tiny DeepSeek-OCR 2, a 640x480 page, `generate` of 16 tokens,
events-only). Streams of each size are then made from it, as version-5 events files: its prefill, followed by copies
of one recorded decode step (steps, call indices, seqs and times renumbered; lanes, shapes and parents kept). Each
size is merged in a fresh process (`read_events` + `session_report`: reading, checking, loop inference, the MoE
ledger and the exactness check), which prints its wall time and its peak resident memory (sampled every 2 ms)
above its resident memory before reading; the table shows us/event and bytes/event per size.

    python bench/merge_scale.py                          # 1e4 1e5 1e6
    python bench/merge_scale.py --sizes 1e4 1e5 1e6 1e7  # 1e7 writes a ~0.5 GB file and takes a few minutes

Targets (issue 9): at most 10 us and 500 bytes per event, linear in the number of events.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_US, TARGET_BYTES = 10.0, 500.0


def record(path: Path, new_tokens: int) -> None:
    import torch

    from loopmeta import instrument
    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.sessions.pages import synthetic_page

    model = build_model("tiny")
    inputs = prepare_inputs(build_processor(), synthetic_page(640, 480))
    with instrument(model, events=path), torch.inference_mode():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)


def synthesize(source: Path, target: Path, events: int) -> int:
    """A stream of about `events` calls: the source's prefill, then copies of its decode step 1."""
    from loopmeta.events.stream import EventWriter, read_events
    from loopmeta.events.table import NO_PARENT

    header, table, end = read_events(source)
    c = table.columns
    rows = [tuple(c[name][r] for name in table.names) + (None,) for r in range(len(table))]  # in finish order
    prefill = [row for row in rows if row[1] == 0]
    step = [row for row in rows if row[1] == 1]
    calls_per_step: dict[int, int] = {}
    for row in step:
        calls_per_step[row[3]] = calls_per_step.get(row[3], 0) + 1
    writer = EventWriter(target)
    writer.open(header, table.nodes)
    writer.write_calls(table, prefill)
    done, k = len(prefill), 0
    span = max(row[11] for row in step) - min(row[10] for row in step)  # a step's time, from its first start
    while done < events:
        shift, later = k * len(step), k * span
        batch = [(seq + shift, 1 + k, phase, node, index + k * calls_per_step[node],
                  parent if parent == NO_PARENT else parent + shift, lane, inputs, outputs, thread, start + later,
                  stop + later, None)
                 for seq, _, phase, node, index, parent, lane, inputs, outputs, thread, start, stop, _ in step]
        writer.write_calls(table, batch)
        done += len(batch)
        k += 1
    steps = 1 + k
    writer.write_end(type(end)(session=end.session, events=done, steps=steps, ended="returned"))
    writer.close()
    return done


def rss() -> int:
    """Resident bytes of this process now (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


class RssPeak:
    """Samples the resident memory every 2 ms from a thread; `stop()` gives the peak above the start."""

    def __init__(self) -> None:
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return max(self.peak, rss()) - self.base


def merge_one(path: str) -> None:
    """Child process: merge one file, print a JSON line with seconds and resident bytes above the baseline."""
    from loopmeta.events.stream import read_events
    from loopmeta.model_configs import load_config
    from loopmeta.report.build import session_report

    config = load_config("deepseek_ocr2_hf")
    sampler = RssPeak()
    t0 = time.perf_counter()
    header, table, end = read_events(path)
    t1 = time.perf_counter()
    report = session_report(table, config, model_class=header.model_class, end=end,
                            container_sizes=header.container_sizes)
    t2 = time.perf_counter()
    print(json.dumps({"events": len(table), "read_s": t1 - t0, "merge_s": t2 - t1, "bytes": sampler.stop(),
                      "steps": len(report.steps)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1e4", "1e5", "1e6"])
    parser.add_argument("--merge-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge_one:
        merge_one(args.merge_one)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source.jsonl"
        record(source, 16)
        table = Table(title="merge of N events (read_events + session_report), fresh process per size")
        for col in ("events", "file MB", "read s", "merge s", "us/event", "peak MB", "bytes/event", "target"):
            table.add_column(col, justify="right")
        for size in args.sizes:
            path = Path(tmp) / f"s{size}.jsonl"
            n = synthesize(source, path, int(float(size)))
            out = subprocess.run([sys.executable, __file__, "--merge-one", str(path)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            us = (r["read_s"] + r["merge_s"]) / n * 1e6
            per = r["bytes"] / n
            ok = "met" if us <= TARGET_US and per <= TARGET_BYTES else "missed"
            table.add_row(f"{n:,}", f"{path.stat().st_size / 1e6:.1f}", f"{r['read_s']:.2f}", f"{r['merge_s']:.2f}",
                          f"{us:.1f}", f"{r['bytes'] / 1e6:.0f}", f"{per:.0f}", ok)
            path.unlink()
            console.print(f"{n:,} events merged", highlight=False)
        console.print(table)


if __name__ == "__main__":
    main()
