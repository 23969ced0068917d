"""Tests of loopmeta.probe.capture / loopmeta.probe.seed against an independent hook-based count.

The reference count uses plain ``register_forward_pre_hook`` / ``register_forward_hook`` with a stack,
in a separate (untraced) run of the same inputs.
"""

from __future__ import annotations

import copy
import types
from collections import Counter

import pytest
import torch
from torch import nn

pytest.importorskip("torchlens")

from loopmeta.errors import CaptureError  # noqa: E402
from loopmeta.merge.calltree import counts, from_trace  # noqa: E402
from loopmeta.probe.capture import CallTree, TracedCall, capture, method_root_address  # noqa: E402
from loopmeta.probe.seed import seed_fields  # noqa: E402


def call_counts(tree):
    return counts(from_trace(tree))


def calls_of(tree, address):
    return sorted((c for c in tree.calls.values() if c.address == address), key=lambda c: c.index)

# ------------------------------------------------------------------------------------------------
# independent reference: hooks with a stack


def _flatten_shapes(value, out):
    if isinstance(value, torch.Tensor):
        out.append(tuple(value.shape))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten_shapes(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _flatten_shapes(v, out)


class HookRecorder:
    """Every module call of ``model`` in start order: (address, index, parent key, input shapes)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.events: list[tuple[str, int, tuple[str, int] | None, tuple]] = []
        self._stack: list[tuple[str, int]] = []
        self._counts: Counter = Counter()
        self._handles = []

    def __enter__(self):
        for address, mod in self.model.named_modules():
            self._handles.append(mod.register_forward_pre_hook(self._pre(address), with_kwargs=True))
            self._handles.append(mod.register_forward_hook(self._post(address), always_call=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _pre(self, address):
        def hook(module, args, kwargs):
            self._counts[address] += 1
            key = (address, self._counts[address])
            shapes: list = []
            _flatten_shapes(list(args), shapes)
            _flatten_shapes(kwargs, shapes)
            parent = self._stack[-1] if self._stack else None
            self.events.append((address, key[1], parent, tuple(shapes)))
            self._stack.append(key)

        return hook

    def _post(self, address):
        def hook(module, args, output):
            popped = self._stack.pop()
            assert popped[0] == address

        return hook

    def counts(self, skip=()) -> dict[str, int]:
        return dict(Counter(a for a, _, _, _ in self.events if a not in skip))


# ------------------------------------------------------------------------------------------------
# a small custom model: repeated child, a no-tensor-op call, a shared module, an uncalled module


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.lin(x))


class NoOp(nn.Module):
    """Runs no tensor op and returns no tensor: absent from TorchLens's calls."""

    def forward(self, x):
        return x.shape[0]


class Ident(nn.Module):
    """Returns its input unchanged: present, with one TorchLens-injected ``identity`` op."""

    def forward(self, x):
        return x


class Block(nn.Module):
    def __init__(self, shared: nn.Module):
        super().__init__()
        self.inner = Inner()
        self.noop = NoOp()
        self.ident = Ident()
        object.__setattr__(self, "shared_ref", shared)  # called here, registered on the root only

    def forward(self, x, scale=None):
        self.noop(x)
        x = self.ident(x)
        for _ in range(3):  # same module called 3 times in one parent call
            x = self.inner(x)
        x = self.shared_ref(x)
        return x * scale[:, None, None]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Block(self.shared), Block(self.shared)])
        self.head = nn.Linear(8, 4)
        self.unused = nn.Linear(3, 3)

    def forward(self, x, y=None):
        x = self.shared(x)
        for block in self.blocks:
            x = block(x, scale=y)
        return self.head(x)


NOOP = {"blocks.0.noop", "blocks.1.noop"}


@pytest.fixture(scope="module")
def net_case():
    torch.manual_seed(0)
    net = Net().eval()
    x, y = torch.randn(2, 3, 8), torch.ones(2)
    with HookRecorder(net) as rec, torch.no_grad():
        net(x, y=y)
    tree = capture(net, (x,), {"y": y}, model=net)
    return net, tree, rec


def _check_against_hooks(tree: CallTree, rec: HookRecorder, skip=(), root_parent=None):
    """Counts, parents, execution order and input shapes of ``tree`` equal the hook reference."""
    events = [e for e in rec.events if e[0] not in skip]
    walked = [c for c in tree.walk() if c.key != root_parent]
    assert [(c.address, c.index) for c in walked] == [(a, i) for a, i, _, _ in events]
    for call, (_, _, parent, shapes) in zip(walked, events):
        assert call.parent == (parent if parent is not None else root_parent), call.label
        assert call.input_shapes == shapes, call.label
    counts = call_counts(tree)
    counts.pop(root_parent[0] if root_parent else None, None)
    assert counts == rec.counts(skip)


def test_custom_module_against_hooks(net_case):
    net, tree, rec = net_case
    # hooks see the no-tensor-op calls, TorchLens does not: exactly those differ
    assert set(rec.counts()) - set(call_counts(tree)) == NOOP
    assert set(tree.uncalled) == NOOP | {"blocks", "unused"}
    _check_against_hooks(tree, rec, skip=NOOP)

    assert tree.root == ("", 1) and tree.method is None
    assert call_counts(tree).get("blocks.0.inner", 0) == 3
    assert call_counts(tree).get("shared", 0) == 3
    assert call_counts(tree).get("blocks", 0) == 0
    assert [c.parent for c in calls_of(tree, "shared")] == [("", 1), ("blocks.0", 1), ("blocks.1", 1)]
    assert tree.calls[("blocks.0", 1)].children == (
        ("blocks.0.ident", 1),
        ("blocks.0.inner", 1),
        ("blocks.0.inner", 2),
        ("blocks.0.inner", 3),
        ("shared", 2),
    )
    assert tree.calls[("", 1)].input_shapes == ((2, 3, 8), (2,))
    assert tree.calls[("blocks.1", 1)].input_shapes == ((2, 3, 8), (2,))  # scale= keyword included
    assert tree.class_names["blocks.0.inner"] == "Inner"
    assert tree.class_names["blocks"] == "ModuleList"
    assert isinstance(tree.calls[("head", 1)], TracedCall)


def test_custom_module_ops_and_seed(net_case):
    net, tree, _ = net_case
    # own ops only: relu in inner, linear in lin, mul in block, linear in shared/head
    assert tree.calls[("blocks.0.inner", 2)].num_ops == 1
    assert tree.calls[("blocks.0.inner.lin", 2)].num_ops == 1
    assert tree.calls[("blocks.0", 1)].num_ops == 2  # getitem (scale[:, None, None]) + mul
    assert tree.calls[("blocks.0.ident", 1)].num_ops == 1  # TorchLens's injected identity op
    assert tree.calls[("", 1)].num_ops == 0
    assert sum(c.num_ops for c in tree.walk()) == tree.num_ops == 22

    seed = seed_fields(tree)
    assert seed["call_counts"] == call_counts(tree)
    assert seed["edges"] == {
        "->shared": 1,
        "->blocks.0": 1,
        "->blocks.1": 1,
        "->head": 1,
        "blocks.0->blocks.0.ident": 1,
        "blocks.0->blocks.0.inner": 3,
        "blocks.0.inner->blocks.0.inner.lin": 3,
        "blocks.0->shared": 1,
        "blocks.1->blocks.1.ident": 1,
        "blocks.1->blocks.1.inner": 3,
        "blocks.1.inner->blocks.1.inner.lin": 3,
        "blocks.1->shared": 1,
    }
    assert seed["op_call_counts"]["blocks.0.inner"] == 3
    assert seed["op_call_counts"]["shared"] == 3
    assert seed["op_call_counts"][""] == 0
    assert sum(seed["op_call_counts"].values()) == tree.num_ops
    assert seed["module_children"][""] == ["shared", "blocks", "head", "unused"]
    assert seed["module_children"]["blocks"] == ["blocks.0", "blocks.1"]
    assert seed["module_children"]["blocks.0"] == ["blocks.0.inner", "blocks.0.noop", "blocks.0.ident"]
    assert seed["module_children"]["unused"] == []
    assert set(seed["module_children"]) == {a for a, _ in net.named_modules()}


def test_submodule_as_fn(net_case):
    net, _, _ = net_case
    x = torch.randn(2, 3, 8)
    tree = capture(net.blocks[1].inner, (x,), model=net)
    assert tree.root == ("blocks.1.inner", 1)
    assert tree.calls[tree.root].children == (("blocks.1.inner.lin", 1),)
    assert call_counts(tree) == {"blocks.1.inner": 1, "blocks.1.inner.lin": 1}
    assert "blocks.0" in tree.uncalled and "" in tree.uncalled
    # TorchLens instruments only fn's own subtree: Block calls ``shared`` (registered on the root),
    # whose parameters then have no provenance and TorchLens re-runs the forward -> refused.
    with pytest.raises(CaptureError, match="forward twice"):
        capture(net.blocks[1], (x,), {"scale": torch.ones(2)}, model=net)


def test_summary_parsing():
    from loopmeta.probe.capture import shapes_from_summary

    summary = (
        "{hidden_states: Tensor(shape=(1, 5, 32), dtype=float32), note: 'Tensor(shape=(9,), dtype=x)', "
        "pos: [Tensor(shape=(5,), dtype=int64), Tensor(shape=(), dtype=float32)], cache: <DynamicCache>}"
    )
    assert shapes_from_summary(summary) == [(1, 5, 32), (5,), ()]
    assert shapes_from_summary(None) == [] and shapes_from_summary("[]") == []


# ------------------------------------------------------------------------------------------------
# nothing saved


def test_nothing_saved(monkeypatch):
    import torchlens

    seen = {}
    real_trace = torchlens.trace

    def spy(*args, **kwargs):
        tr = real_trace(*args, **kwargs)
        seen.update(
            ops=tr.num_saved_ops,
            layers=tr.num_saved_layers,
            calls=tr.num_saved_module_calls,
            payloads=sum(1 for op in tr.ops if getattr(op, "has_saved_activations", False)),
        )
        return tr

    monkeypatch.setattr(torchlens, "trace", spy)
    net = Net().eval()
    capture(net, (torch.randn(2, 3, 8),), {"y": torch.ones(2)}, model=net)
    assert seen == {"ops": 0, "layers": 0, "calls": 0, "payloads": 0}


# ------------------------------------------------------------------------------------------------
# rebind, rerun detection, errors


@torch.jit.script
def _scripted_quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _plain_quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _fake_vendor_module():
    """A module object whose model calls the module-level TorchScript helper ``quick_gelu``."""
    vendor = types.ModuleType("fake_vendor")
    vendor.torch, vendor.nn = torch, nn
    vendor.quick_gelu = _scripted_quick_gelu
    exec(
        "class Mlp(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc1 = nn.Linear(4, 4); self.fc2 = nn.Linear(4, 4)\n"
        "        self.fail = False\n"
        "    def forward(self, x):\n"
        "        if self.fail: raise ValueError('boom')\n"
        "        return self.fc2(quick_gelu(self.fc1(x)))\n",
        vendor.__dict__,
    )
    return vendor


def test_rescue_rerun_refused_and_rebind():
    vendor = _fake_vendor_module()
    mlp = vendor.Mlp().eval()
    x = torch.randn(2, 4)
    with pytest.raises(CaptureError, match="forward twice"):
        capture(mlp, (x,), model=mlp)

    tree = capture(mlp, (x,), model=mlp, rebind=[(vendor, "quick_gelu", _plain_quick_gelu)])
    assert vendor.quick_gelu is _scripted_quick_gelu  # restored
    assert call_counts(tree) == {"": 1, "fc1": 1, "fc2": 1}
    assert tree.calls[("", 1)].num_ops == 3  # mul, sigmoid, mul: visible once rebound


def test_rebind_restored_on_error():
    vendor = _fake_vendor_module()
    mlp = vendor.Mlp().eval()
    mlp.fail = True
    marker = object()
    with pytest.raises(CaptureError, match="boom"):
        capture(
            mlp,
            (torch.randn(2, 4),),
            model=mlp,
            rebind=[(vendor, "quick_gelu", _plain_quick_gelu), (vendor, "brand_new", marker)],
        )
    assert vendor.quick_gelu is _scripted_quick_gelu
    assert not hasattr(vendor, "brand_new")


def test_bad_fn():
    net = Net()
    with pytest.raises(CaptureError, match="not a submodule"):
        capture(nn.Linear(2, 2), (torch.randn(1, 2),), model=net)
    with pytest.raises(CaptureError, match="bound method"):
        capture(lambda x: x, (torch.randn(1, 2),), model=net)


# ------------------------------------------------------------------------------------------------
# tiny random Llama from a transformers config


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (1, 5))
    return model, ids


def test_llama_forward_against_hooks(llama):
    model, ids = llama
    with HookRecorder(model) as rec, torch.no_grad():
        model(ids)
    tree = capture(model, (ids,), model=model)
    _check_against_hooks(tree, rec)
    # uncalled = modules the hooks never saw (4.46 also has an unused self_attn.rotary_emb)
    assert set(tree.uncalled) == {a for a, _ in model.named_modules()} - set(rec.counts())
    assert "model.layers" in tree.uncalled
    assert tree.calls[("model.layers.1", 1)].parent == ("model", 1)
    assert tree.calls[("model.layers.0.self_attn.q_proj", 1)].input_shapes == ((1, 5, 32),)
    seed = seed_fields(tree)
    assert seed["edges"]["model->model.layers.0"] == 1
    assert "model.layers->model.layers.0" not in seed["edges"]
    assert sum(seed["op_call_counts"].values()) == tree.num_ops


def test_llama_generate_bound_method(llama):
    model, ids = llama
    gen_kwargs = {"max_new_tokens": 2, "do_sample": False}
    with HookRecorder(model) as rec, torch.no_grad():
        model.generate(ids, **gen_kwargs)
    tree = capture(model.generate, (ids,), gen_kwargs, model=model)

    root = method_root_address("generate")
    assert tree.root == (root, 1) and tree.method == "generate"
    names = {a for a, _ in model.named_modules()}
    for call in tree.walk():
        assert not call.address.startswith("owner"), call.address
        assert call.address in names or call.address == root
    assert tree.calls[(root, 1)].children == (("", 1), ("", 2))
    assert call_counts(tree).get("lm_head", 0) == 2
    assert tree.calls[("", 1)].class_name == "LlamaForCausalLM"
    _check_against_hooks(tree, rec, root_parent=(root, 1))
    # prefill seq 5, decode step seq 1
    assert tree.calls[("model.layers.0.mlp.down_proj", 1)].input_shapes == ((1, 5, 64),)
    assert tree.calls[("model.layers.0.mlp.down_proj", 2)].input_shapes == ((1, 1, 64),)
    seed = seed_fields(tree)
    assert seed["edges"][f"{root}->"] == 2
    assert seed["op_call_counts"][root] > 0  # generate's own bookkeeping ops
    assert seed["module_children"][root] == [""]


def test_llama_decode_step_with_cache(llama):
    import transformers

    model, ids = llama
    # transformers 5.x renamed the keyword to ``cache=`` (``past_key_values=`` still works, with a warning)
    key = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
    cache = transformers.DynamicCache()
    with torch.no_grad():
        out = model(ids, use_cache=True, **{key: cache})
    past_len = cache.get_seq_length()
    assert past_len == ids.shape[1]
    nxt = out.logits[:, -1:].argmax(-1)
    cache_copy = copy.deepcopy(cache)
    tree = capture(model, (), {"input_ids": nxt, key: cache_copy, "use_cache": True}, model=model)
    assert cache.get_seq_length() == past_len
    assert cache_copy.get_seq_length() == past_len + 1  # the trace appends to the cache passed in
    assert call_counts(tree).get("model.layers.1", 0) == 1
    assert tree.calls[("", 1)].input_shapes == ((1, 1),)  # the cache object is opaque
    assert tree.calls[("model.layers.1.self_attn.o_proj", 1)].input_shapes == ((1, 1, 32),)
