"""Config fragments (`include`) and declared lane totals (`[[image_positions]]`): the loader merges what several
configs share, and the report checks any config's totals against the prefill's image positions, model-free."""

from __future__ import annotations

import pytest
import torch

from loopmeta.errors import ConfigError
from loopmeta.model_configs import config_for_classes, load_config
from loopmeta.patches import instrument
from loopmeta.report.build import session_report

TOY = """name = "toy"
reads_values = []
root_classes = ["Toy"]
adapter = "toy"
stages = ["body"]
include = ["parts/step.toml"]
[[image_positions]]
role = "part"
key = "rows"
what = "rows made"
hint = "pass more positions"
[[targets]]
role = "part"
pattern = "a"
stage = "body"
on_exit = "rows"
"""
STEP = """name = "not this"
reads_values = ["the fragment's read"]
[requires]
torch = ">=1"
[[targets]]
role = "step"
pattern = ""
step = true
on_enter = "step"
"""
ADAPTER = """def step(call):
    past = call.arg("past")
    lane = {"phase": "prefill" if past == 0 else "decode"}
    return {**lane, "image_positions": call.arg("positions")} if past == 0 else lane
def rows(call, result):
    return {"rows": int(result.shape[0])}
"""


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)

    def forward(self, x, past=0, positions=0):
        return self.a(x)


@pytest.fixture()
def toy(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "step.toml").write_text(STEP)
    (tmp_path / "toy.py").write_text(ADAPTER)
    (tmp_path / "toy.toml").write_text(TOY)
    return tmp_path


def test_a_fragment_is_merged_under_the_config(toy):
    config = load_config(toy / "toy.toml")
    assert [t.role for t in config.targets] == ["part", "step"]  # the fragment's targets after the config's own
    assert config.name == "toy" and config.requires == {"torch": ">=1"}  # own values win; tables fill in
    assert config.reads_values == ("the fragment's read",)  # lists are appended
    (total,) = config.image_positions
    assert (total.role, total.key, total.what, total.hint) == ("part", "rows", "rows made", "pass more positions")


def test_fragments_and_totals_are_checked(toy):
    (toy / "parts" / "step.toml").write_text('include = ["more.toml"]\n' + STEP)
    with pytest.raises(ConfigError, match="fragment parts/step.toml includes further fragments"):
        load_config(toy / "toy.toml")
    (toy / "parts" / "step.toml").unlink()
    with pytest.raises(ConfigError, match="cannot read model config .*step.toml"):
        load_config(toy / "toy.toml")
    (toy / "parts" / "step.toml").write_text(STEP)
    (toy / "toy.toml").write_text(TOY.replace('role = "part"\nkey', 'role = "nobody"\nkey'))
    with pytest.raises(ConfigError, match=r"\[\[image_positions\]\] names roles \['nobody'\]"):
        load_config(toy / "toy.toml")
    (toy / "toy.toml").write_text(TOY.replace('what = "rows made"\n', ""))
    with pytest.raises(ConfigError, match=r"\[\[image_positions\]\] #0 needs what"):
        load_config(toy / "toy.toml")


@pytest.mark.parametrize("positions,rows,warned", [(3, 3, []), (2, 3, ["image positions 2 < rows made 3: pass more "
                                                                        "positions"]), (None, 3, [])])
def test_any_config_may_declare_totals_the_positions_must_equal(toy, positions, rows, warned):
    config = load_config(toy / "toy.toml")
    model = Toy()
    with instrument(model, config) as rec:
        model(torch.ones(rows, 4), 0, positions)
        model(torch.ones(1, 4), 1)  # a decode step: never checked
    assert session_report(rec.events, config, model_class="Toy", end=rec.end).warnings == warned


def test_auto_never_confuses_the_three_deepseek_code_bases():
    picked = {cls: config_for_classes([cls]).name for cls in (
        "DeepseekOCRForCausalLM", "DeepseekOCR2ForCausalLM", "DeepseekOcr2ForConditionalGeneration")}
    assert picked == {"DeepseekOCRForCausalLM": "deepseek_ocr_v1", "DeepseekOCR2ForCausalLM": "deepseek_ocr2_remote",
                      "DeepseekOcr2ForConditionalGeneration": "deepseek_ocr2_hf"}
    assert config_for_classes(["DeepseekOCR2Model"]) is None


def test_v1_and_the_remote_ocr2_share_one_llm_table():
    v1, ocr2 = load_config("deepseek_ocr_v1"), load_config("deepseek_ocr2_remote")
    llm = [t for t in v1.targets if t.stage in ("llm", "lm_head")]
    assert [t for t in ocr2.targets if t.stage in ("llm", "lm_head")] == llm and len(llm) == 6
    assert ocr2.session.load == v1.session.load == "infer_session" and ocr2.requires == v1.requires
    assert ocr2.session.modes == {"card": {"base_size": 1024, "image_size": 768, "crop_mode": True}}
