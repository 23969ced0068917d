"""DeepSeek-OCR v1 through the command line, the whole path on the stub (whose infer() has the vendor's signature,
its bfloat16 images, its `.cuda()` calls and its 8192-token generate): items 18-20 and Ctrl-C (13)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from stubs.deepseek_ocr_v1 import load_stub_model

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture()
def v1_hub(monkeypatch, tmp_path):
    """`--model stub-v1` loads the stub as the hub would load the remote code (no download, no weights)."""
    import transformers

    loaded = {}

    def model(name, **kwargs):
        m = load_stub_model(seed=5, fresh=True)
        loaded["model"] = m.to(kwargs.get("torch_dtype") or torch.float32)
        loaded["dtype"] = kwargs.get("torch_dtype")
        return loaded["model"]

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        lambda name, **kw: types.SimpleNamespace(architectures=["DeepseekOCRForCausalLM"]))
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: None)
    image = tmp_path / "page.png"
    PIL.new("RGB", (1000, 800), "white").save(image)
    return loaded, image


def base_args(image, out):
    return ["--model", "stub-v1", "--trust-remote-code", "--ignore-version-pins", "--image", image, "--out", out]


def test_the_whole_v1_path_on_a_cpu(v1_hub, cli, tmp_path):
    loaded, image = v1_hub
    cuda = vars(torch.Tensor).get("cuda")  # absent, or what TorchLens left there when an earlier test traced
    code, err = cli(*base_args(image, tmp_path / "out"), "--mode", "base", "--max-new-tokens", "3")
    assert code == 0, err
    assert loaded["dtype"] == torch.bfloat16  # what infer()'s bfloat16 images need on a CPU
    assert "at most 3 new tokens" in err and ".cuda() as a no-op" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["lm_head"] == 3  # infer() asks for 8192: capped at --max-new-tokens
    assert [s["phase"] for s in report["steps"]] == ["prefill", "decode", "decode"]
    assert report["probe"]["traced_steps"] == 3  # every step: the probe repeats up to PROBE_STEPS of them
    assert vars(torch.Tensor).get("cuda") is cuda  # the no-op is gone: Tensor.cuda is as it was


def test_float32_on_the_v1_path_is_refused_with_the_dtype_that_works(v1_hub, cli, tmp_path):
    _, image = v1_hub
    code, err = cli(*base_args(image, tmp_path / "out"), "--dtype", "float32")
    assert code == 2 and "pass --dtype bfloat16" in err


def test_the_v1_path_needs_an_image(v1_hub, cli, tmp_path):
    _, image = v1_hub
    code, err = cli(*base_args(image, tmp_path / "out"), "--prompt", "Free OCR.")
    assert code == 2 and "needs an image" in err and "<image>" in err
    code, err = cli("--model", "stub-v1", "--trust-remote-code", "--ignore-version-pins", "--out", tmp_path)
    assert code == 2 and "needs an image" in err


def test_an_unknown_mode_lists_the_modes(v1_hub, cli, tmp_path):
    _, image = v1_hub
    code, err = cli(*base_args(image, tmp_path / "out"), "--mode", "huge")
    assert code == 2 and "gundam" in err


def raise_at_third_lm_head_call(monkeypatch, error):
    """Make the v1 session's model raise `error` when its `lm_head` is called the third time (step 2)."""
    from loopmeta.model_configs import deepseek_ocr_v1

    real = deepseek_ocr_v1.infer_session

    def session(request, config):
        s = real(request, config)
        seen = []

        def crash(module, args):
            seen.append(1)
            if len(seen) == 3:
                raise error
        s.model.lm_head.register_forward_pre_hook(crash)
        return s

    monkeypatch.setattr(deepseek_ocr_v1, "infer_session", session)


def test_ctrl_c_says_where_it_stopped(v1_hub, cli, tmp_path, monkeypatch):
    loaded, image = v1_hub
    raise_at_third_lm_head_call(monkeypatch, KeyboardInterrupt())
    code, err = cli(*base_args(image, tmp_path / "out"), "--mode", "base", "--max-new-tokens", "5")
    assert code == 2 and "interrupted at step 2" in err and "events.jsonl" in err and "incomplete" in err
    end = json.loads((tmp_path / "out" / "events.jsonl").read_text().splitlines()[-1])
    assert (end["kind"], end["ended"]) == ("end", "interrupted")


def test_ctrl_c_before_the_session_does_not_report_an_earlier_runs_events(v1_hub, cli, tmp_path, monkeypatch):
    import os

    from loopmeta import run_traced

    loaded, image = v1_hub
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").write_text("an earlier run's events\n")
    os.utime(out / "events.jsonl", (1e9, 1e9))

    def interrupt(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_traced, "load_session", interrupt)
    code, err = cli(*base_args(image, out), "--mode", "base")
    assert code == 2 and "interrupted before any event was recorded" in err


def test_a_model_that_raises_gets_one_line_and_its_traceback_in_a_file(v1_hub, cli, tmp_path, monkeypatch):
    """The model's own error (raised inside a recorded forward): one line naming it and the step, exit status 2, the
    traceback in error.txt, the events kept and ended `raised`. An error of loopmeta's own inside the session (here
    before the model runs) keeps its traceback, although the session ended `raised` too; a later successful run in
    the same folder removes the stale error.txt."""
    loaded, image = v1_hub
    from loopmeta import run_traced

    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        raise_at_third_lm_head_call(patched, RuntimeError("CUDA out of memory (simulated)\nsecond line"))
        code, err = cli(*base_args(image, out), "--mode", "base", "--max-new-tokens", "5")
    assert code == 2 and "the model raised RuntimeError: CUDA out of memory (simulated) at step 2;" in err
    assert "second line" not in err and str(out / "error.txt") in err and "--allow-incomplete" in err
    trace = (out / "error.txt").read_text()
    assert trace.startswith("Traceback") and "crash" in trace and "second line" in trace
    end = json.loads((out / "events.jsonl").read_text().splitlines()[-1])
    assert (end["kind"], end["ended"], end["error"]) == ("end", "raised", "RuntimeError")

    real = run_traced.profiled_run

    def ours(run, args):
        def failing():
            raise RuntimeError("a bug of loopmeta's")
        return failing
    with monkeypatch.context() as patched:
        patched.setattr(run_traced, "profiled_run", ours)
        with pytest.raises(RuntimeError, match="a bug of loopmeta's"):
            run_traced.main([str(a) for a in base_args(image, out)] + ["--mode", "base"])
    end = json.loads((out / "events.jsonl").read_text().splitlines()[-1])
    assert (end["ended"], end["error"]) == ("raised", "RuntimeError") and (out / "error.txt").exists()
    assert run_traced.profiled_run is real
    code, err = cli(*base_args(image, out), "--mode", "base", "--max-new-tokens", "2", "--no-torchlens")
    assert code == 0 and not (out / "error.txt").exists()
