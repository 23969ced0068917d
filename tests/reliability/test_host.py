"""The host program never breaks and nothing is lost: bad extractor values, report writes cut short, shared events
files, threads, torch.compile (items 6-10 and 12 of docs/reliability.md; disk-full cases: tests/test_lifecycle.py)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from loopmeta.errors import InstrumentationError, MergeError, ReportFileError
from loopmeta.patches import instrument, is_instrumented
from loopmeta.pipeline import trace_session
from loopmeta.writers import write_report
from stubs.deepseek_ocr_v1 import MODES


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))


def toy_config(tmp_path: Path, lane: str = '{"phase": "prefill"}') -> Path:
    (tmp_path / "toy.py").write_text(f"import torch\n\n\ndef step(call):\n    return {lane}\n")
    (tmp_path / "toy.toml").write_text('name = "toy"\nroot_classes = ["Toy"]\nadapter = "toy"\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
                                       '[[targets]]\nrole = "a"\npattern = "a"\n[[targets]]\nrole = "b"\npattern = "b"\n')
    return tmp_path / "toy.toml"


def test_an_extractor_returning_a_non_json_value_is_contained(tmp_path):
    config = toy_config(tmp_path, '{"phase": "prefill", "dtype": torch.float32}')
    model, x = Toy(), torch.ones(2, 4)
    plain = model(x)
    with instrument(model, config, events=tmp_path / "e.jsonl") as rec:
        assert torch.equal(model(x), plain)  # the user's forward is untouched
    (root,) = [e for e in rec.events if e.address == ""]
    assert "not a dict of plain JSON values" in root.lane["extract_error"]
    with pytest.raises(MergeError, match="metadata extraction failed"):
        trace_session(model, lambda: model(x), config=config)


def test_a_report_write_cut_short_keeps_the_old_report(v1_sessions, tmp_path, monkeypatch):
    from loopmeta.report import session_report
    from loopmeta.model_configs import load_config

    s = v1_sessions["base"]
    report = session_report(s["recorder"].events, load_config("deepseek_ocr_v1"), model_class="m",
                            end=s["recorder"].end, container_sizes=s["recorder"].header.container_sizes)
    paths = write_report(report, tmp_path)
    old = {form: path.read_bytes() for form, path in paths.items()}
    report.notes.append("a second version")

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ReportFileError, match="No space left on device"):
        write_report(report, tmp_path)
    monkeypatch.undo()
    assert {form: path.read_bytes() for form, path in paths.items()} == old  # whole old files, not truncated ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "report.txt"]  # no temp files


def test_two_live_sessions_cannot_share_an_events_file(tmp_path):
    config = toy_config(tmp_path)
    one, two = Toy(), Toy()
    with instrument(one, config, events=tmp_path / "e.jsonl"):
        with pytest.raises(InstrumentationError, match="being written by another live session"):
            instrument(two, config, events=tmp_path / "." / "e.jsonl")
        assert not is_instrumented(two)
    with instrument(two, config, events=tmp_path / "e.jsonl"):  # free again once the first session ended
        pass


def test_instrument_and_uninstrument_racing_in_threads(tmp_path):
    config = toy_config(tmp_path)
    original = vars(torch.nn.Linear)["forward"]
    errors: list[BaseException] = []

    def worker():
        try:
            for _ in range(25):
                model = Toy()
                with instrument(model, config) as rec:
                    model(torch.ones(1, 4))
                assert [e.address for e in rec.events] == ["a", "b", ""]
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert vars(torch.nn.Linear)["forward"] is original  # nothing left wrapped


def test_torch_compile(tmp_path):
    config = toy_config(tmp_path)
    model = Toy()
    compiled = torch.compile(model)
    with pytest.raises(InstrumentationError, match="compiled with torch.compile"):
        instrument(compiled, config)
    model.compile()
    with pytest.raises(InstrumentationError, match="compiled with torch.compile"):
        instrument(model, config)


def test_compiling_after_instrumenting_gives_no_report(tmp_path):
    config = toy_config(tmp_path)
    model, x = Toy(), torch.ones(2, 4)
    plain = model(x)
    with pytest.raises(MergeError, match="torch.compile"):
        trace_session(model, lambda: torch.compile(model)(x), config=config)
    compiled_out = torch.compile(model)(x)
    assert torch.allclose(compiled_out, plain)


def test_a_session_on_a_model_that_raises_is_never_left_instrumented(v1_model):
    inputs = v1_model.prepare_infer_inputs(image_size=(1000, 800), **MODES["base"])
    inputs.pop("plan")
    with pytest.raises(IndexError):
        trace_session(v1_model, lambda: v1_model(input_ids=torch.full((1, 4), 10**6)), config="deepseek_ocr_v1",
                      check_versions=False)
    assert not is_instrumented(v1_model)
