"""Event streams that are cut, edited or mismatched give a loud refusal, or a report marked incomplete; never a
report that looks complete (items 2-5, 11, 15 of docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import lines_of, write_lines
from loopmeta.errors import EventFileError
from loopmeta.events import read_events

TESTS = Path(__file__).resolve().parents[1]

KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from stubs.deepseek_ocr_v1 import MODES, load_stub_model
from loopmeta.patches import instrument

model = load_stub_model()
inputs = model.prepare_infer_inputs(image_size=(1000, 800), **MODES["base"])
inputs.pop("plan")
count = [0]
def kill(module, args):
    count[0] += 1
    if count[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
getattr(model, {module!r}).register_forward_pre_hook(kill) if {module!r} else model.register_forward_pre_hook(kill)
with instrument(model, "deepseek_ocr_v1", events={path!r}, check_versions=False):
    model.generate(**inputs, max_new_tokens=5)
"""


@pytest.mark.parametrize("where, module", [("at a step boundary", ""), ("mid-step", "lm_head")])
def test_a_killed_run_is_incomplete_in_every_form(tmp_path, cli, where, module):
    path = tmp_path / "events.jsonl"
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS), module=module, path=str(path))],
                          capture_output=True, timeout=300)
    assert done.returncode == -9  # really killed
    assert read_events(path).end is None
    code, err = cli("--from-events", path, "--out", tmp_path / "out")
    assert code == 2 and "the run was interrupted" in err and "--allow-incomplete" in err
    assert not (tmp_path / "out" / "report.json").exists()
    code, err = cli("--from-events", path, "--out", tmp_path / "out", "--allow-incomplete")
    assert code == 0, err
    out = tmp_path / "out"
    for name in ("report.txt", "report.md"):
        assert "incomplete: ended after step 1" in (out / name).read_text(), name
    assert json.loads((out / "report.json").read_text())["incomplete"].startswith("incomplete: ended after step 1")
    assert json.loads((out / "report.json").read_text())["counts"]["lm_head"] == 2


def test_a_stream_missing_its_last_step_is_incomplete(stream, cli, tmp_path):
    lines = lines_of(stream)
    last = lines[-2]["step"]
    write_lines(stream, [line for line in lines if line.get("step") != last and line["kind"] != "end"])
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "no end record" in err


def test_a_missing_last_started_call_is_caught_by_the_counts(stream, cli, tmp_path):
    lines = lines_of(stream)
    head = max(i for i, line in enumerate(lines) if line.get("address") == "lm_head")
    write_lines(stream, lines[:head] + lines[head + 1:])
    with pytest.raises(EventFileError, match="the stream lost events"):
        read_events(stream)
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "end record counts" in err


def test_a_config_that_does_not_match_the_stream_is_refused(stream, cli, tmp_path):
    code, err = cli("--from-events", stream, "--config", "deepseek_ocr2_hf", "--out", tmp_path / "out")
    assert code == 2 and "does not match the stream" in err and "deepseek_ocr_v1" in err


def test_a_header_only_stream_is_refused(stream, cli, tmp_path):
    header = lines_of(stream)[0]
    write_lines(stream, [header, {"kind": "end", "session": header["session"], "events": 0, "steps": 0,
                                  "ended": "returned"}])
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "recorded no call" in err
    write_lines(stream, [header])
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "no end record" in err


def test_reading_a_stream_never_runs_code_it_names(stream, cli, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (evil / "evil.toml").write_text('adapter = "evil"\n[[targets]]\nrole = "s"\npattern = ""\nstep = true\n')
    lines = lines_of(stream)
    lines[0]["config"] = str(evil / "evil.toml")
    write_lines(stream, lines)
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "not built in" in err and "--config" in err
    assert not marker.exists()


def test_a_duplicated_line_is_named(stream, cli, tmp_path):
    lines = lines_of(stream)
    lines.insert(5, lines[4])
    lines[-1]["events"] += 1
    write_lines(stream, lines)
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and "appears twice" in err and "duplicated line" in err


@pytest.mark.parametrize("edit, message", [
    (lambda path: path.write_bytes(b"\xff\xfe" + path.read_bytes()), "not UTF-8"),
    (lambda path: write_lines(path, [{**lines_of(path)[0], "container_sizes": [1, 2]}] + lines_of(path)[1:]),
     "container_sizes must map"),
    (lambda path: write_lines(path, lines_of(path)[:-1] + [{**lines_of(path)[-1], "ended": "maybe"}]),
     "bad end record"),
])
def test_malformed_files_are_one_line_errors(stream, cli, tmp_path, edit, message):
    edit(stream)
    code, err = cli("--from-events", stream, "--out", tmp_path / "out")
    assert code == 2 and message in err and len(err.strip().splitlines()) <= 2
