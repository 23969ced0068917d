"""Metadata-only TorchLens capture, converted at once into a small neutral `CallTree`.

The rest of loopmeta never touches TorchLens objects: `capture` runs `torchlens.trace` saving no activation, checks
that nothing was saved and that the forward ran once, converts the trace into `TracedCall` records and drops it.
Addresses are rooted at `model` (root `""`); tracing a bound method (`model.generate`) adds a synthetic root call
`"<generate>"` whose children are the model's forwards. What TorchLens gives and hides, and why each check exists:
docs/torchlens.md.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..common.attributes import swapped
from ..common.tensors import shapes
from ..errors import CaptureError
from .ops import TracedOp, traced_ops

CallKey = tuple[str, int]

# TorchLens's names for the root of a trace and for the owner of a traced bound method (docs/torchlens.md#addresses)
_TL_ROOT = "self"
_TL_OWNER = "owner"


@dataclass(frozen=True)
class TracedCall:
    """One module call of a TorchLens trace, free of TorchLens objects."""

    address: str  # rooted at `model` (root ""); "<method>" for a bound-method root
    index: int  # 1-based call index of this address (TorchLens numbering)
    class_name: str
    parent: CallKey | None  # the dynamic parent call; None only for the root call
    children: tuple[CallKey, ...]  # in execution order
    input_shapes: tuple[tuple[int, ...], ...]  # tensor inputs, positional then keyword, flattened
    num_ops: int  # ops whose innermost module call is this one (input/output/buffer pseudo-ops excluded)

    @property
    def key(self) -> CallKey:
        return (self.address, self.index)


@dataclass
class CallTree:
    """The call tree of one traced region plus the static module tree of `model`."""

    root: CallKey
    calls: dict[CallKey, TracedCall]
    static_children: dict[str, tuple[str, ...]]  # address -> direct child addresses, uncalled ones included
    class_names: dict[str, str]  # every module address -> class name
    uncalled: tuple[str, ...]  # module addresses with no call in the trace (named_modules() order)
    method: str | None = None  # the traced bound method ("generate"), None when a module was traced
    num_ops: int = 0  # trace.num_ops = the sum of the calls' num_ops
    ops: tuple[TracedOp, ...] = ()  # every op in execution order (probe/ops.py)

    def walk(self) -> Iterator[TracedCall]:
        """All calls in execution order (pre-order from the root through `children`)."""
        stack = [self.root]
        while stack:
            call = self.calls[stack.pop()]
            yield call
            stack.extend(reversed(call.children))


def method_root_address(method_name: str) -> str:
    """Address given to the synthetic root call of a bound-method trace (`"<generate>"`)."""
    return f"<{method_name}>"


def metadata_only_options() -> Any:
    """TorchLens `CaptureOptions` that save no activation and skip TorchLens's search for repeated subgraphs
    (`recurrence_detection`: it groups ops into TorchLens "layers", which loopmeta never reads; docs/torchlens.md)."""
    from torchlens.options import CaptureOptions

    return CaptureOptions(layers_to_save=None, inference_only=True, save_code_context=False,
                          compute_input_output_distances=False, save_raw_input=False, save_raw_output=False,
                          recurrence_detection=False)


_STRING_LITERAL = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_TENSOR_SHAPE = re.compile(r"Tensor\(shape=\(([0-9,\s]*)\), dtype=")


def shapes_from_summary(summary: str | None) -> list[tuple[int, ...]]:
    """Tensor shapes, in order, from a TorchLens argument summary string (docs/torchlens.md#input-shapes)."""
    if not summary or summary == "None":
        return []
    text = _STRING_LITERAL.sub("''", summary)  # a str argument cannot fake a tensor
    return [tuple(int(d) for d in m.group(1).replace(" ", "").split(",") if d)
            for m in _TENSOR_SHAPE.finditer(text)]


@dataclass(frozen=True)
class _Addresses:
    """Maps TorchLens addresses and call labels to addresses rooted at `model`."""

    base: str  # address in `model` of the traced module or of the traced method's owner
    root: str  # address of the trace's root call
    method: str | None
    class_names: dict[str, str]

    @classmethod
    def of(cls, fn: Any, model: Any) -> "_Addresses":
        from torch import nn

        module_addr: dict[int, str] = {}
        class_names: dict[str, str] = {}
        for address, mod in model.named_modules():
            module_addr.setdefault(id(mod), address)
            class_names[address] = type(mod).__name__
        if isinstance(fn, nn.Module):
            if id(fn) not in module_addr:
                raise CaptureError(f"capture: fn ({type(fn).__name__}) is not a submodule of model")
            return cls(module_addr[id(fn)], module_addr[id(fn)], None, class_names)
        owner = getattr(fn, "__self__", None)
        if not isinstance(owner, nn.Module):
            raise CaptureError(f"capture: fn must be an nn.Module or a bound method of one, got {type(fn).__name__}")
        if id(owner) not in module_addr:
            raise CaptureError(f"capture: the owner of {fn.__name__} ({type(owner).__name__}) is not a submodule "
                               "of model")
        return cls(module_addr[id(owner)], method_root_address(fn.__name__), str(fn.__name__), class_names)

    def address(self, tl_address: str) -> str:
        if tl_address == _TL_ROOT:
            return self.root
        rest = tl_address
        if self.method is not None:
            if tl_address != _TL_OWNER and not tl_address.startswith(_TL_OWNER + "."):
                raise CaptureError(f"capture: unexpected TorchLens address {tl_address!r} in a bound-method trace")
            rest = tl_address[len(_TL_OWNER) + 1:]
        mapped = rest if self.base == "" else (f"{self.base}.{rest}" if rest else self.base)
        if mapped not in self.class_names:
            raise CaptureError(f"capture: TorchLens address {tl_address!r} maps to {mapped!r}, which is not in "
                               "model.named_modules()")
        return mapped

    def label(self, label: str) -> CallKey:
        address, _, index = label.rpartition(":")
        return self.address(address), int(index)

    def class_name(self, address: str) -> str:
        if address == self.root and self.method is not None:
            return f"{self.class_names[self.base]}.{self.method}"
        return self.class_names[address]


def capture(fn: Any, args: Any = (), kwargs: Mapping[str, Any] | None = None, *, model: Any,
            rebind: Sequence[tuple[object, str, object]] = ()) -> CallTree:
    """Trace `fn(*args, **kwargs)` with TorchLens (metadata only, under `torch.no_grad()`) and return its call tree.

    `fn` is `model` (or a submodule of it) or a bound method of one (`model.generate`); `model`'s `named_modules()`
    defines the addresses. `args` is the tuple of positional arguments (a non-tuple value is one argument).
    `rebind` lists `(namespace, attribute, replacement)` set for the trace only (e.g. a TorchScript helper replaced
    by plain Python). Raises `CaptureError` when TorchLens is missing or fails, when activations were saved, when the
    forward ran twice, or when the trace is internally inconsistent.
    """
    import torch

    try:
        import torchlens
        from torchlens.errors import ScalarEscapeWarning
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CaptureError("torchlens is not installed: the TorchLens capture needs `pip install torchlens>=2.36`"
                           ) from exc
    names = _Addresses.of(fn, model)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    kwargs = dict(kwargs or {})
    try:
        with swapped(*rebind), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ScalarEscapeWarning)  # generate() reads values: harmless here
            trace = torchlens.trace(fn, args or None, input_kwargs=kwargs or None, capture=metadata_only_options())
    except Exception as exc:
        raise CaptureError(f"TorchLens trace of {getattr(fn, '__qualname__', type(fn).__name__)} failed: "
                           f"{type(exc).__name__}: {exc}") from exc
    # The trace is dropped without `trace.cleanup()`, which deletes every attribute of every op one by one (about
    # 0.5 ms per op); its reference cycles go with Python's garbage collector (docs/torchlens.md#cost).
    _check_trustworthy(trace)
    return _convert(trace, names, shapes(list(args)) + shapes(kwargs))


def _check_trustworthy(trace: Any) -> None:
    """A trace whose forward ran twice, or that saved activations, is refused (docs/torchlens.md#forward-re-runs)."""
    rerun = getattr(trace, "rescue_rerun", None)
    if rerun is not None:
        detail = ""
        if isinstance(rerun, Mapping):
            detail = (f" (trigger={rerun.get('trigger')!r}, forward_runs={rerun.get('forward_runs')!r},"
                      f" residual_signal={rerun.get('residual_signal')!r})")
        raise CaptureError(
            f"TorchLens ran the forward twice (trace.rescue_rerun is set{detail}): any event stream recorded during "
            "this capture is doubled and the trace cannot be merged. Usual causes: a TorchScript function in the "
            "model (rebind it to plain Python with rebind=[(namespace, name, replacement)]), or a torch function "
            "patched or bound by name before TorchLens wrapped torch (call "
            "torchlens.backends.torch.wrappers.wrap_torch() before patching).")
    saved = {name: getattr(trace, name, 0) for name in ("num_saved_ops", "num_saved_layers", "num_saved_module_calls")}
    if any(saved.values()):
        raise CaptureError(f"TorchLens saved activations in a metadata-only capture: {saved}")


def _own_ops(trace: Any) -> tuple[str, dict[str, int]]:
    """The root call's label and, per call label, the ops whose innermost module call it is."""
    roots = [mc.call_label for mc in trace.module_calls if mc.call_parent is None]
    if len(roots) != 1:
        raise CaptureError(f"TorchLens trace has {len(roots)} root calls {roots[:3]}, expected one")
    own: dict[str, int] = {}
    for op in trace.ops:
        if not (op.is_input or op.is_output or op.is_buffer):
            label = op.module if op.module is not None else roots[0]
            own[label] = own.get(label, 0) + 1
    if sum(own.values()) != trace.num_ops:
        raise CaptureError(f"TorchLens op count mismatch: {sum(own.values())} ops listed, "
                           f"trace.num_ops={trace.num_ops}")
    return roots[0], own


def _convert(trace: Any, names: _Addresses, root_shapes: list[tuple[int, ...]]) -> CallTree:
    root_label, own = _own_ops(trace)
    calls: dict[CallKey, TracedCall] = {}
    for mc in trace.module_calls:
        key = names.label(mc.call_label)
        if key in calls:
            raise CaptureError(f"two TorchLens calls map to {key[0]!r}:{key[1]}")
        is_root = mc.call_parent is None
        calls[key] = TracedCall(
            address=key[0], index=key[1], class_name=names.class_name(key[0]),
            parent=None if is_root else names.label(mc.call_parent),
            children=tuple(names.label(c) for c in mc.call_children),
            input_shapes=tuple(root_shapes if is_root else shapes_from_summary(mc.forward_args_summary)
                               + shapes_from_summary(mc.forward_kwargs_summary)),
            num_ops=own.pop(mc.call_label, 0))
    if own:
        raise CaptureError(f"TorchLens ops attributed to unknown module calls: {sorted(own)}")
    root = names.label(root_label)
    _check_links(calls, root)
    static_children: dict[str, list[str]] = {a: [] for a in names.class_names}
    for address in names.class_names:
        if address:
            static_children[address.rpartition(".")[0]].append(address)
    called = {c.address for c in calls.values()}
    class_names = dict(names.class_names)
    if names.method is not None:
        static_children[names.root] = [names.base]
        class_names[names.root] = calls[root].class_name
    return CallTree(root=root, calls=calls, static_children={a: tuple(c) for a, c in static_children.items()},
                    class_names=class_names, uncalled=tuple(a for a in names.class_names if a not in called),
                    method=names.method, num_ops=trace.num_ops,
                    ops=traced_ops(trace, names.address, names.label, root))


def _check_links(calls: dict[CallKey, TracedCall], root: CallKey) -> None:
    """Every parent/child link is mutual and every call is reachable from the root."""
    for call in calls.values():
        for child in call.children:
            if child not in calls or calls[child].parent != call.key:
                raise CaptureError(f"inconsistent TorchLens call tree at {call.address}:{call.index} -> {child}")
    reached, stack = 0, [root]
    while stack:
        reached += 1
        stack.extend(calls[stack.pop()].children)
    if reached != len(calls):
        raise CaptureError(f"TorchLens call tree: {len(calls) - reached} calls unreachable from the root")
