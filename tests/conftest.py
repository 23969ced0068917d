"""Shared fixtures: the stubbed DeepSeek-OCR v1 model (loaded under a dynamic module name) and its sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from stubs.deepseek_ocr_v1 import load_stub_model


class TensorOps(TorchFunctionMode):
    """Records, in order, every torch function whose result holds a tensor, and every host read of tensor values
    (`host:tolist`, `host:item`, ...: what would sync a GPU)."""

    HOST_READS = {"tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        flat = out if isinstance(out, (tuple, list)) else (out,)
        if name in self.HOST_READS:
            self.ops.append(f"host:{name}")
        elif any(isinstance(x, torch.Tensor) for x in flat):
            self.ops.append(getattr(func, "__qualname__", None) or name or repr(func))
        return out


def hook_counts(model, run, addresses=None):
    """Independent count: calls per module address seen by forward pre-hooks while `run()` runs (every module, or
    those in `addresses`)."""
    from collections import Counter

    seen: Counter[str] = Counter()
    handles = [m.register_forward_pre_hook(lambda mod, args, a=a: seen.update([a]))
               for a, m in model.named_modules() if addresses is None or a in addresses]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def v1_instrumented_addresses(cfg) -> set[str]:
    """The modules the deepseek_ocr_v1 config records, listed from the stub's own config numbers (not from the
    engine's pattern matching): root, model, SAM and its blocks, CLIP, its transformer and layers, the projector,
    every decoder layer, and in each MoE layer the MoE block, its gate, experts and shared experts; lm_head."""
    out = {"", "model", "model.sam_model", "model.vision_model", "model.vision_model.transformer", "model.projector",
           "lm_head"}
    out |= {f"model.sam_model.blocks.{i}" for i in range(cfg.sam_depth)}
    out |= {f"model.vision_model.transformer.layers.{j}" for j in range(cfg.clip_layers)}
    for layer in range(cfg.num_hidden_layers):
        out.add(f"model.layers.{layer}")
        if layer >= cfg.first_k_dense_replace and layer % cfg.moe_layer_freq == 0:
            mlp = f"model.layers.{layer}.mlp"
            out |= {mlp, f"{mlp}.gate", *(f"{mlp}.experts.{e}" for e in range(cfg.n_routed_experts))}
            if cfg.n_shared_experts:
                out.add(f"{mlp}.shared_experts")
    return out


def end_of(events, ended="returned"):
    """A consistent end record for a (possibly edited) list of events, as a complete stream would carry."""
    from loopmeta.events import SessionEnd

    steps = len({e.step for e in events if e.role == "step"})
    return SessionEnd(session=events[0].session if events else "s", events=len(events), steps=steps, ended=ended)


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


needs_transformers5 = pytest.mark.skipif(
    transformers_major() < 5, reason="DeepSeek-OCR 2 ships natively only in transformers 5.x")
needs_transformers4 = pytest.mark.skipif(
    transformers_major() >= 5, reason="DeepSeek-OCR 2's remote code runs only on transformers 4.45-4.47 (its Qwen2 "
                                      "encoder subclasses 4.x's Qwen2Model and relies on its _update_causal_mask); so "
                                      "does its stub")


@pytest.fixture(scope="session")
def v1_model():
    return load_stub_model()


@pytest.fixture(scope="session")
def v1_sessions(v1_model, tmp_path_factory):
    """Instrumented sessions on the v1 stub, run once: name -> (recorder, inputs, output)."""
    from loopmeta.patches import instrument

    out = {}
    runs = {
        "gundam_2x3": dict(image_size=(900, 1400), mode="gundam", new=3),
        "base": dict(image_size=(1000, 800), mode="base", new=2),
        "text": dict(image_size=None, mode="gundam", new=2),
    }
    from stubs.deepseek_ocr_v1 import MODES

    for name, run in runs.items():
        inputs = v1_model.prepare_infer_inputs(image_size=run["image_size"], **MODES[run["mode"]])
        plan = inputs.pop("plan")
        path = tmp_path_factory.mktemp(name) / "events.jsonl"
        with instrument(v1_model, "deepseek_ocr_v1", events=path, check_versions=False) as rec:
            seqs = v1_model.generate(**inputs, max_new_tokens=run["new"])
        out[name] = dict(recorder=rec, inputs=inputs, plan=plan, sequences=seqs, new=run["new"], path=path)
    return out


# --- the reliability matrix: the command line in-process, event files edited line by line


@pytest.fixture()
def cli(capsys):
    """Run the command line in-process: (exit status, stderr)."""
    from loopmeta import run_traced

    def run(*argv: str) -> tuple[int, str]:
        try:
            code = run_traced.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err
    return run


@pytest.fixture()
def stream(v1_sessions, tmp_path):
    """A copy of a complete v1 event file (2 new tokens, base mode), in version 3 (one line per call)."""
    path = tmp_path / "events.jsonl"
    shutil.copy(v1_sessions["base"]["path"], path)
    return as_version3(path)


def as_version3(path: Path) -> Path:
    """Rewrite an events file in version 3 (one JSON object per call, in the order calls finished), the older format
    loopmeta still reads: tests edit calls one line at a time in it."""
    import dataclasses

    from loopmeta.events.stream import dump_line, read_events
    from loopmeta.events.v3 import call_line

    header, table, end = read_events(path)
    lines = [dump_line(dataclasses.replace(header, version=3))] + [call_line(e) for e in table.events()]
    path.write_text("\n".join(lines + ([dump_line(end)] if end else [])) + "\n")
    return path


def as_version4(path: Path) -> Path:
    """Rewrite an events file in version 4 (rows without the thread and times of version 5), the format loopmeta
    wrote before call times: it is still read as before."""
    import dataclasses

    from loopmeta.events.stream import EventWriter, read_events
    from loopmeta.events.table import ROW, EventTable

    header, table, end = read_events(path)
    untimed = EventTable(table.session)
    untimed.lanes, untimed.tensors = table.lanes, table.tensors
    rows = [tuple(table.columns[name][r] for name in ROW) + (table.errors.get(r),) for r in range(len(table))]
    writer = EventWriter(path)
    writer.open(dataclasses.replace(header, version=4, time_origin_ns=None), table.nodes)
    writer.write_calls(untimed, rows)
    if end is not None:
        writer.write_end(end)
    writer.close()
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
