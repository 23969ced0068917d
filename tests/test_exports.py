"""The command line's work outputs: roofline bounds on a chosen accelerator, and exports that GenZ's own code reads
back with the report's FLOPs (its MACs x 2, Repeat multipliers included), per stage and in total."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys
import types

import pytest

from loopmeta.run_traced import main
from loopmeta.work.roofline import builtin_hardware, load_hardware

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    pytest.importorskip("transformers.models.deepseek_ocr2")
    out = tmp_path_factory.mktemp("work")
    assert main(["--out", str(out), "--max-new-tokens", "5", "--hardware", "h200",
                 "--export", "genz,llm-viewer,csv"]) == 0
    report = json.loads((out / "report.json").read_text())
    return out, report


def genz():
    """GenZ's analysis module without its package __init__ (which imports plotting libraries)."""
    spec = importlib.util.find_spec("GenZ")
    if spec is None:
        pytest.skip("GenZ is not installed (pip install --no-deps genz-llm==0.0.16)")
    root = os.path.dirname(spec.origin)
    for name, path in (("GenZ", root), ("GenZ.LLM_inference", os.path.join(root, "LLM_inference"))):
        if name not in sys.modules or not hasattr(sys.modules[name], "analyse_model"):
            module = types.ModuleType(name)
            module.__path__ = [path]
            sys.modules[name] = module
    from GenZ.analyse_model import get_model_df, get_summary_table
    from GenZ.system import System
    from GenZ.unit import Unit

    return get_model_df, get_summary_table, System, Unit


def test_genz_reads_the_exports_with_the_reports_flops(run):
    out, report = run
    get_model_df, get_summary_table, System, Unit = genz()
    work = report["work"]
    flops = {}
    for step, stage, f, *_ in work["step_stage"]["rows"]:
        flops[(step, stage)] = f
    checked = 0
    for group, step in (("prefill", 0), ("decode", 1)):
        stages = {s for (st, s), f in flops.items() if st == step and f}
        for stage in [None, *stages]:
            path = out / "genz" / f"{group}{'.' + stage if stage else ''}.csv"
            df = get_model_df(str(path), System(), Unit(), batch_size=1, data_path=str(out),
                              model_characterstics=True)
            macs = float(get_summary_table(df, Unit(), model_characterstics=True)["MACs (MFLOP)"].iloc[0]) * 1e6
            expected = sum(f for (st, s), f in flops.items() if st == step and (stage is None or s == stage))
            assert macs * 2 == pytest.approx(expected, rel=1e-9), (group, stage)
            checked += 1
    assert checked >= 6
    # the whole session, derived decode steps included, against the report's session total
    assert work["derived_steps"] and max(s["step"] for s in work["steps"]) > max(work["probed_steps"])
    df = get_model_df(str(out / "genz" / "session.csv"), System(), Unit(), batch_size=1, data_path=str(out),
                      model_characterstics=True)
    macs = float(get_summary_table(df, Unit(), model_characterstics=True)["MACs (MFLOP)"].iloc[0]) * 1e6
    assert macs * 2 == pytest.approx(work["total"]["flops"], rel=1e-9)
    rows = list(csv.reader((out / "genz" / "prefill.llm.csv").open()))
    assert any(r[0] == "Repeat" and r[1] == "2" for r in rows)  # the two identical MoE layers fold into Repeat 2


def test_llm_viewer_table_and_roofline(run):
    out, report = run
    work = report["work"]
    hw = load_hardware("h200")
    rows = list(csv.DictReader((out / "llm_viewer.csv").open()))
    step_flops = {s["step"]: s["flops"] for s in work["steps"]}
    assert sum(int(r["OPs"]) for r in rows if r["group"] == "prefill") == step_flops[0]
    assert sum(int(r["OPs"]) for r in rows if r["group"] == "decode") == step_flops[1]
    ridge = hw.peak_flops[work["compute_dtype"]] / hw.bandwidth
    assert all(r["bound"] == ("compute" if float(r["arithmetic_intensity"]) >= ridge else "memory")
               for r in rows if int(r["memory_access"]))
    roof = work["roofline"]
    phases = {s["step"]: s["phase"] for s in work["steps"]}
    peak = hw.peak_flops[work["compute_dtype"]]
    expected = sum(max(r[2] / peak, sum(r[3:7]) / hw.bandwidth) for r in work["step_stage"]["rows"])
    assert roof["total_bound_s"] == pytest.approx(expected)
    assert {(r["group"], r["stage"]) for r in roof["stages"]} == {(phases[r[0]], r[1])
                                                                  for r in work["step_stage"]["rows"]}
    text = (out / "report.txt").read_text()
    assert "roofline lower bounds on NVIDIA H200" in text and "not predicted times" in text
    assert "| group | stage | GFLOP |" in (out / "report.md").read_text()
    ops = json.loads((out / "ops.json").read_text())
    assert ops["rows"] and len(list(csv.reader((out / "report_ops.csv").open()))) == len(ops["rows"]) + 1


def test_from_events_carries_the_work_and_changes_hardware(run, tmp_path):
    out, report = run
    assert main(["--from-events", str(out / "events.jsonl"), "--hardware", "mi300x", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["work"]["step_stage"] == report["work"]["step_stage"]
    assert again["work"]["roofline"]["hardware"].startswith("AMD Instinct MI300X")


def test_hardware_table_and_custom_entries(tmp_path, capsys):
    table = builtin_hardware()
    assert {"h100", "h200", "a100", "l40s", "b200", "mi300x"} <= set(table)
    for hw in table.values():
        assert hw.source and {"bfloat16", "float16"} <= set(hw.peak_flops) and hw.bandwidth > 1e11
    mine = tmp_path / "gpu.toml"
    mine.write_text('[x]\nname = "X"\nsource = "mine"\nbandwidth = 1e12\npeak_flops = { float32 = 1e14 }\n')
    assert load_hardware(str(mine)).peak_flops == {"float32": 1e14}
    for bad in ("nosuch", str(tmp_path / "missing.toml")):
        assert main(["--hardware", bad, "--out", str(tmp_path / "o"), "--max-new-tokens", "1"]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "hardware" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before any model ran
