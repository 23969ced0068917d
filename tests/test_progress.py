"""Live progress of run_traced.py: on a terminal (a pseudo-terminal here) it shows each phase and, while the session
runs, the steps and calls recorded so far; the numbers it shows never exceed what the session recorded. When the
output is not a terminal it shows nothing (test_ocr2.py's run without arguments checks that)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import needs_transformers5

REPO = Path(__file__).resolve().parent.parent


def run_in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the command line with stdout and stderr on a pseudo-terminal 200 columns wide; (exit status, output)."""
    master, slave = os.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "run_traced.py"), *args], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


@needs_transformers5
def test_progress_on_a_terminal(tmp_path):
    status, out = run_in_terminal(["--out", "out", "--max-new-tokens", "3", "--no-svg", "--no-html", "--no-trace"],
                                  tmp_path)
    assert status == 0, out[-2000:]
    frames = re.findall(r"running the instrumented session \(\d+ s\): (\d+) steps? so far, ([\d,]+) calls recorded",
                        out)
    assert frames, out[-2000:]
    end = json.loads((tmp_path / "out" / "events.jsonl").read_text().splitlines()[-1])  # the stream's end record
    steps = [int(s) for s, _ in frames]
    calls = [int(c.replace(",", "")) for _, c in frames]
    assert steps == sorted(steps) and calls == sorted(calls)  # counts only grow
    assert max(steps) <= end["steps"] == 3 and max(calls) <= end["events"]
    for phase in ("building the model and inputs", "TorchLens probe of the first 3 steps",
                  "building the report from the events", "writing the report files"):
        assert phase in out, phase
    assert "step 0: prefill" in out  # the report itself is printed after the display is gone
