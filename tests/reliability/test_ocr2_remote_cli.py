"""DeepSeek-OCR 2's remote code through the command line, on its stub (whose infer() has the vendor's signature, its
image_size=640 default, bfloat16 images, `.cuda()` calls and 8192-token generate): the model card's settings by
default, the settings options, the crop-size trap on the console. Image positions are computed here from the facts
(docs/models/deepseek-ocr2-remote.md#modes)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from conftest import needs_transformers4

pytestmark = needs_transformers4
PIL = pytest.importorskip("PIL.Image")


@pytest.fixture()
def saved_stub(monkeypatch, tmp_path):
    """A model folder as the hub saves remote code (config.json naming the architecture and the auto_map); loading
    it builds the stub, as `trust_remote_code` would build the vendor's classes (no weights)."""
    import transformers

    from stubs.deepseek_ocr2_remote import load_stub_model

    folder = tmp_path / "DeepSeek-OCR-2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekOCR2ForCausalLM"], "model_type": "deepseek_vl_v2",
        "auto_map": {"AutoConfig": "modeling_deepseekocr2.DeepseekOCR2Config",
                     "AutoModel": "modeling_deepseekocr2.DeepseekOCR2ForCausalLM"}}))
    loaded = {}

    def config(name, **kwargs):
        assert kwargs.get("trust_remote_code"), "remote code needs trust_remote_code"
        return types.SimpleNamespace(**json.loads((folder / "config.json").read_text()))

    def model(name, **kwargs):
        assert kwargs.get("trust_remote_code")
        loaded["model"] = load_stub_model(seed=5, fresh=True).to(kwargs.get("torch_dtype") or torch.float32)
        return loaded["model"]

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: None)
    page = tmp_path / "page.png"
    PIL.new("RGB", (1600, 1200), "white").save(page)
    return folder, page, loaded


def args(folder, page, out, *more):
    return ["--model", folder, "--trust-remote-code", "--image", page, "--out", out, "--no-svg", *more]


def test_the_model_card_settings_by_default(saved_stub, cli, tmp_path):
    folder, page, loaded = saved_stub
    code, err = cli(*args(folder, page, tmp_path / "out", "--max-new-tokens", "3"))
    assert code == 0, err
    assert "deepseek_ocr2_remote, mode card" in err and "at most 3 new tokens" in err and "WARNING" not in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["phase"] for s in report["steps"]] == ["prefill", "decode", "decode"]  # 8192 asked, 3 given
    assert report["steps"][0]["image_positions"] == 256 + 1 + 144 * 6  # 1600x1200: a 3x2 grid of 768 crops
    assert report["warnings"] == [] and report["probe"]["traced_steps"] == 3


def test_infer_defaults_warn_on_the_console(saved_stub, cli, tmp_path):
    folder, page, _ = saved_stub
    code, err = cli(*args(folder, page, tmp_path / "out", "--image-size", "640", "--max-new-tokens", "2",
                          "--no-torchlens"))
    assert code == 0, err
    line = "image positions 857 < vision features 1121"  # 256 + 1 + 100 * 6 < 256 + 1 + 144 * 6
    assert f"WARNING: {line}" in err and "image_size=640" in err
    assert f"WARNING: {line}" in (tmp_path / "out" / "report.txt").read_text()


def test_no_crop_mode_at_768(saved_stub, cli, tmp_path):
    folder, page, _ = saved_stub
    code, err = cli(*args(folder, page, tmp_path / "out", "--no-crop-mode", "--image-size", "768", "--no-torchlens",
                          "--max-new-tokens", "1"))
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["steps"][0]["image_positions"] == (768 // 64) ** 2 + 1 and not report["warnings"]
    assert report["counts"]["model.sam_model"] == 1  # one view, no crops


def test_settings_a_config_does_not_have_are_refused(saved_stub, cli, tmp_path):
    folder, page, _ = saved_stub
    code, err = cli(*args(folder, page, tmp_path / "out", "--config", "deepseek_ocr2_hf", "--image-size", "768"))
    assert code == 2 and "--image-size" in err and "leave it out" in err and len(err.strip().splitlines()) == 1
