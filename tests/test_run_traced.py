"""run_traced.py refuses what it cannot do with a message that says what to do, and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_transformers5, transformers_major

from loopmeta.run_traced import main

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "run_traced.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_missing_model(tmp_path):
    done = run("--model", str(tmp_path / "nothing"), cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot load the config" in done.stderr and "local Hugging Face cache" in done.stderr


def test_model_it_does_not_drive(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    done = run("--model", str(tmp_path / "llama"), cwd=tmp_path)
    assert done.returncode == 2
    assert "LlamaForCausalLM" in done.stderr and "config-free" in done.stderr
    assert "Traceback" not in done.stderr


@needs_transformers5
def test_forced_config_that_does_not_fit(tmp_path):
    done = run("--config", "deepseek_ocr_v1", "--no-torchlens", "--max-new-tokens", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "config 'deepseek_ocr_v1' is for root classes" in done.stderr


@pytest.mark.skipif(transformers_major() >= 5, reason="checks the message shown under transformers 4.x")
def test_builtin_model_needs_transformers5(tmp_path):
    done = run(cwd=tmp_path)
    assert done.returncode == 2
    assert "the built-in model needs transformers 5.x" in done.stderr


def test_unwritable_output_folder(tmp_path, v1_sessions):
    """A report that cannot be written is a one-line error, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = run("--from-events", str(v1_sessions["base"]["path"]), "--out", str(blocker / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot write the report to" in done.stderr and "--out" in done.stderr


@pytest.mark.real_model
def test_builtin_model_in_bfloat16(tmp_path):
    """--dtype bfloat16 on the built-in model: the page's pixels follow the model's dtype (they once stayed float32
    and the first convolution refused them)."""
    pytest.importorskip("transformers.models.deepseek_ocr2")
    assert main(["--out", str(tmp_path), "--no-torchlens", "--dtype", "bfloat16", "--max-new-tokens", "2"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["steps"][-1]["step"] == 1
