"""Config-free mode: the exact loop nest of a model that has no config here, from its TorchLens trace alone."""

from __future__ import annotations

import pytest
import torch

from conftest import hook_counts
from loopmeta.probe.capture import capture
from loopmeta.merge.loops import expand, walk
from loopmeta.report.build import structural_report
from loopmeta.writers import to_text


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


class Repeats(torch.nn.Module):
    """One child called three times in one parent call, and a ModuleList run as a stack."""

    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Linear(4, 4)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(5))

    def forward(self, x):
        for _ in range(3):
            x = self.shared(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_llama_forward_expands_to_hook_counts(llama):
    ids = torch.arange(1, 9)[None]
    tree = capture(llama, (ids,), model=llama)
    report = structural_report(tree)
    assert expand(report.loops) == hook_counts(llama, lambda: llama(ids))
    (layers,) = [l for l in walk(report.loops) if l.container == "model.layers"]
    assert (layers.kind, layers.bound, layers.members) == ("for", 3, [0, 1, 2])
    assert report.config is None and report.source == "torchlens"
    assert "model.layers[0..2] for 3" in to_text(report)


def test_llama_generate_steps_are_a_parfor(llama):
    ids = torch.arange(1, 6)[None]
    tree = capture(llama.generate, (ids,), {"max_new_tokens": 3, "do_sample": False}, model=llama)
    report = structural_report(tree)
    counts = expand(report.loops)
    assert counts.pop("<generate>") == 1
    assert counts == hook_counts(llama, lambda: llama.generate(ids, max_new_tokens=3, do_sample=False))
    (steps,) = [l for l in walk(report.loops) if l.address == "" and l.kind == "parfor"]
    assert steps.bound == 3


def test_repeat_and_stack():
    model = Repeats().eval()
    x = torch.ones(2, 4)
    report = structural_report(capture(model, (x,), model=model))
    kinds = {(l.kind, l.address if l.kind == "parfor" else l.container, l.bound) for l in walk(report.loops)}
    assert ("parfor", "shared", 3) in kinds and ("for", "blocks", 5) in kinds
    assert expand(report.loops) == hook_counts(model, lambda: model(x))


def test_members_of_the_root_form_a_stack():
    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(5))).eval()
    x = torch.ones(1, 4)
    report = structural_report(capture(model, (x,), model=model))
    stacks = [l for l in walk(report.loops) if l.kind == "for"]
    assert [(l.container, l.members) for l in stacks] == [("", [0, 1, 2, 3, 4])]
    assert expand(report.loops) == hook_counts(model, lambda: model(x))
    assert "<root>[0..4] for 5" in to_text(report)


class Pick(torch.nn.Module):
    def __init__(self, chosen):
        super().__init__()
        self.chosen = chosen
        self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(6))

    def forward(self, x):
        for i in self.chosen:  # a data-dependent choice, as an MoE makes
            x = self.experts[i](x)
        return x


@pytest.mark.parametrize("chosen, kind", [((1, 4), "select"), ((2, 3), "for")])
def test_config_free_select_only_where_members_leave_a_gap(chosen, kind):
    """One trace cannot show data dependence: a gap among the members that ran reads as a selection, a
    contiguous run as a for."""
    model = Pick(chosen).eval()
    x = torch.ones(1, 4)
    report = structural_report(capture(model, (x,), model=model))
    (loop,) = [l for l in walk(report.loops) if l.container == "experts"]
    assert (loop.kind, loop.members) == (kind, list(chosen))
    if kind == "select":
        assert (loop.picks, loop.container_size) == ([list(chosen)], 6)
    assert expand(report.loops) == hook_counts(model, lambda: model(x))
