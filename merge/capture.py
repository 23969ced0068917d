"""Metadata-only TorchLens capture, converted at once into a small neutral call tree.

The rest of loopmeta never touches TorchLens objects: :func:`capture` runs ``torchlens.trace`` with a
capture configuration that saves no activation, checks that nothing was saved and that the forward ran
once, converts the trace into a :class:`CallTree` of :class:`TracedCall` records, and drops the trace.

Addresses
---------
Addresses are module addresses rooted at ``model`` (the object whose ``named_modules()`` defines them);
the root module is ``""`` (TorchLens calls it ``self``).

* ``fn`` is a module (``model`` itself or one of its submodules): TorchLens's ``self`` becomes the
  address of ``fn`` in ``model`` (``""`` for ``model``) and TorchLens's ``a.b`` becomes ``a.b`` under it.
* ``fn`` is a bound method of a module (``model.generate``): TorchLens wraps it in a synthetic root
  module (``TLBoundMethodRoot``) whose child ``owner`` is ``fn.__self__``; TorchLens addresses read
  ``owner``, ``owner.model.layers.0``, ... The ``owner.`` prefix is replaced by the owner's address
  in ``model`` (so ``owner.lm_head`` -> ``lm_head`` and ``owner`` -> ``""`` when the owner is ``model``),
  and the synthetic root call gets the address ``"<generate>"`` (``"<" + method name + ">"``, see
  :func:`method_root_address`), class name ``"LlamaForCausalLM.generate"``. It is the root of the
  call tree, its children are the model's forwards (``("", 1)``, ``("", 2)``, ...: one per step), and
  the ops ``generate`` runs outside any module (its bookkeeping) are counted on it. It appears in
  ``class_names`` and ``static_children`` (``{"<generate>": ("",)}``) but not in ``named_modules()``.
  Call indices are TorchLens's, unchanged: ``("", k)`` is the k-th forward of the model.

What TorchLens gives per module call (and what it does not)
-----------------------------------------------------------
* ``trace.module_calls`` holds every call (label ``address:k``, 1-based ``k``) with ``call_parent`` (a
  call label, None at the root) and ``call_children`` (call labels in execution order). Iterating
  ``module_calls`` is grouped by address, *not* in execution order; :meth:`CallTree.walk` walks
  ``children`` from the root instead.
* ``ModuleCall.num_ops`` includes descendants' ops and the pseudo-ops ``input``/``output``/``buffer``;
  :attr:`TracedCall.num_ops` is recomputed from ``trace.ops`` (``op.module`` = innermost call label,
  None at root level; ops flagged ``is_input``/``is_output``/``is_buffer`` skipped) so it counts only
  the call's own ops, and the sum over calls equals ``trace.num_ops`` (checked).
* **Input shapes.** TorchLens keeps no structured per-call input tensors in a metadata-only trace:
  ``ModuleCall.forward_args`` / ``forward_kwargs`` are stubbed (``ReleasedTensorStub``) at module exit
  and nulled when the trace is finalised (``inputs_before_pre_hooks`` is None too). What survives is
  ``ModuleCall.forward_args_summary`` / ``forward_kwargs_summary``: strings made by TorchLens's
  ``format_call_arg`` (``[Tensor(shape=(1, 5, 32), dtype=float32)]``, ``{position_ids: Tensor(...),
  cache: <DynamicCache>, use_cache: True}``), untruncated and in call order, recursing into
  list / tuple / dict (incl. ``ModelOutput``) and rendering any other object opaquely (``<DynamicCache>``,
  so tensors inside a KV cache object are invisible). :attr:`TracedCall.input_shapes` is parsed from
  those two strings (positional arguments first, then keyword arguments, nested containers flattened
  depth-first). The root call has no summary (``None``); its shapes are taken from the ``args`` /
  ``kwargs`` handed to :func:`capture` by the same flattening rule. ``ModuleCall.input_ops`` (labels of
  the ops outside the call whose outputs feed it, in op order rather than argument order, each once;
  shapes via ``trace.ops[label].shape``) is the other source; it is not used because it loses the
  argument order and repeated arguments.
* ``ModuleCall.class_name`` is ``""`` for calls in a bound-method trace; class names here come from
  ``model.named_modules()``.

Traps (handled or documented)
-----------------------------
* **A module call that runs no tensor op and returns no tensor** (returns an int, a shape, None, ...)
  is absent from ``trace.module_calls``; its address ends up in :attr:`CallTree.uncalled`. A wrapper
  call that returns no tensor but whose children run tensor ops *is* present. A call that returns its
  input unchanged is present, with one TorchLens-injected ``identity`` op counted on it. Forward
  hooks / wrapt wrappers see the absent calls, so an event stream can have more calls than the
  TorchLens trace for such modules: the merger must expect them from events only.
* ModuleList / ModuleDict containers are never called: they are in ``uncalled`` and in
  ``static_children`` only.
* Ops unreachable from both the inputs and the outputs (island ops) are pruned by TorchLens
  (``keep_orphans=False``), so ``num_ops`` does not count them.
* **Forward re-run**: when ``trace.rescue_rerun`` is not None TorchLens ran the forward twice (seen
  with TorchScript functions, e.g. a module-level ``@torch.jit.script quick_gelu``, and with torch
  functions patched or bound by name before TorchLens wrapped torch). The capture is refused with
  :class:`CaptureError` (an event stream recorded alongside would be doubled). Use ``rebind`` to
  replace TorchScript helpers by plain Python for the duration of the trace.
* TorchLens instruments only ``fn``'s own module subtree: a submodule ``fn`` whose forward calls a
  module registered elsewhere (a shared module) sees that module's parameters as tensors "with no
  provenance" and re-runs the forward (refused as above). Trace ``model`` (or a bound method of it).
* The trace appends to a KV cache passed in (``cache.get_seq_length()`` grows by the step's tokens):
  pass a deep copy when the cache is reused.
* ``.item()`` / ``.tolist()`` in the model (``generate`` does this) give ``ScalarEscapeWarning``s;
  harmless, silenced inside :func:`capture`.

One decode step with a KV cache (transformers 5.24, tiny random Llama and Qwen2, checked)
-----------------------------------------------------------------------------------------
``capture(model, (), {"input_ids": next_ids, "cache": copy.deepcopy(cache), "use_cache": True},
model=model)`` works for ``LlamaForCausalLM`` and ``Qwen2ForCausalLM`` (no rerun, the same call tree
and call order as the prefill, every call's inputs have ``seq`` 1; 139 ops against 143 for the
prefill). In 5.24 the keyword is ``cache=``; ``past_key_values=`` still works with a deprecation
warning (removal announced for 5.40), and the output key is ``.cache``. The cache object is opaque
in the input summaries (``cache: <DynamicCache>``): the past length shows in no module call's input
shapes, only in the attention's ``cat`` ops inside (``(1, 2, S + 1, 8)``), so the step's ``past_len``
must come from the events (or from the cache before the trace). The copy passed in grows by one
token. With transformers 4.46.3 the keyword is ``past_key_values``.

Cost (CPU, torch 2.13, TorchLens 2.36.1, metadata only, one thread)
-------------------------------------------------------------------
Measured on a shared 2-core machine under load from other jobs (load average 2-4), so the numbers are
noisy upper-side figures; an unloaded machine measured about 1.3-1.9 ms per op (torchlens.md). Tiny
random Llama (hidden 32), prompt of 16 tokens, ``capture`` wall time, best of 3:

=================================  =====  ==========  =========  =================
region                             ops    capture     ms / op    vs plain run
=================================  =====  ==========  =========  =================
forward, 2 layers                  143    0.47 s      3.3        ~240x (2 ms)
forward, 8 layers                  497    1.4 s       2.8        ~270x (5 ms)
one decode step with cache, 2 L    139    0.73 s      5.2
one decode step with cache, 8 L    481    1.7 s       3.6
generate(max_new_tokens=4), 2 L    701    4.9 s       7.0        ~400x (12 ms)
generate(max_new_tokens=4), 8 L    2081   10.9 s      5.3        ~620x (18 ms)
=================================  =====  ==========  =========  =================

So a fixed 2-7 ms per op dominates on tiny models (the ratio to a plain run only shrinks for heavy
ops), plus 1-2 s for the first capture in a process. Converting the trace into a :class:`CallTree`
takes about 4 ms for 500 ops (negligible). Trace a short probe (prefill + one decode step), never a
whole generation.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CallKey",
    "CallTree",
    "CaptureError",
    "TracedCall",
    "capture",
    "method_root_address",
    "metadata_only_options",
]

CallKey = tuple[str, int]

# TorchLens's names for the root of a trace and for the owner of a traced bound method
# (torchlens.backends.torch.bound_root.OWNER_ATTRIBUTE).
_TL_ROOT = "self"
_TL_OWNER = "owner"


class CaptureError(RuntimeError):
    """The TorchLens capture could not be made, or cannot be trusted."""


@dataclass(frozen=True)
class TracedCall:
    """One module call of a TorchLens trace, free of TorchLens objects."""

    address: str
    """Module address rooted at ``model`` (root ``""``); ``"<method>"`` for a bound-method root."""
    index: int
    """1-based call index of this address (TorchLens numbering)."""
    class_name: str
    parent: CallKey | None
    """``(address, index)`` of the dynamic parent call; None only for the root call."""
    children: tuple[CallKey, ...]
    """Child calls in execution order."""
    input_shapes: tuple[tuple[int, ...], ...]
    """Shapes of the tensor inputs, positional then keyword, nested containers flattened (see module doc)."""
    num_ops: int
    """Ops whose innermost module call is this call (input/output/buffer pseudo-ops excluded)."""

    @property
    def key(self) -> CallKey:
        return (self.address, self.index)

    @property
    def label(self) -> str:
        return f"{self.address}:{self.index}"


@dataclass
class CallTree:
    """The call tree of one traced region plus the static module tree of ``model``."""

    root: CallKey
    calls: dict[CallKey, TracedCall]
    static_children: dict[str, tuple[str, ...]]
    """address -> direct child addresses (from ``model.named_modules()``), includes uncalled modules."""
    class_names: dict[str, str]
    """every module address -> class name."""
    uncalled: tuple[str, ...]
    """module addresses of ``model`` with no call in the trace (named_modules() order)."""
    method: str | None = None
    """Name of the traced bound method (``"generate"``), None when a module was traced."""
    num_ops: int = 0
    """Total ops of the trace (``trace.num_ops``) = sum of the calls' ``num_ops``."""
    _counts: dict[str, int] | None = field(default=None, repr=False, compare=False)

    def num_calls(self, address: str) -> int:
        return self.call_counts().get(address, 0)

    def call_counts(self) -> dict[str, int]:
        """address -> number of calls, for every called address (execution order of first call)."""
        if self._counts is None:
            counts: dict[str, int] = {}
            for call in self.walk():
                counts[call.address] = counts.get(call.address, 0) + 1
            self._counts = counts
        return dict(self._counts)

    def walk(self) -> Iterator[TracedCall]:
        """All calls in execution order (pre-order from the root through ``children``)."""
        stack = [self.root]
        while stack:
            call = self.calls[stack.pop()]
            yield call
            stack.extend(reversed(call.children))

    def calls_of(self, address: str) -> list[TracedCall]:
        """The calls of ``address`` by index."""
        out = [c for c in self.calls.values() if c.address == address]
        return sorted(out, key=lambda c: c.index)


def method_root_address(method_name: str) -> str:
    """Address given to the synthetic root call of a bound-method trace (``"<generate>"``)."""
    return f"<{method_name}>"


def metadata_only_options() -> Any:
    """TorchLens ``CaptureOptions`` that save no activation (see torchlens.md for the traps)."""
    from torchlens.options import CaptureOptions

    return CaptureOptions(
        layers_to_save=None,
        inference_only=True,
        save_code_context=False,
        compute_input_output_distances=False,
        save_raw_input=False,
        save_raw_output=False,
    )


# --------------------------------------------------------------------------------------------------
# input shapes

_STRING_LITERAL = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_TENSOR_SHAPE = re.compile(r"Tensor\(shape=\(([0-9,\s]*)\), dtype=")


def _shapes_from_summary(summary: str | None) -> list[tuple[int, ...]]:
    """Tensor shapes, in order, from a TorchLens ``format_call_arg`` summary string."""
    if not summary or summary == "None":
        return []
    text = _STRING_LITERAL.sub("''", summary)  # a str argument cannot fake a tensor
    shapes = []
    for m in _TENSOR_SHAPE.finditer(text):
        dims = [d for d in m.group(1).replace(" ", "").split(",") if d]
        shapes.append(tuple(int(d) for d in dims))
    return shapes


def _shapes_from_value(value: Any, out: list[tuple[int, ...]], depth: int = 0) -> None:
    """Same flattening rule as TorchLens's ``format_call_arg``: tensors, list/tuple/dict recursed."""
    if isinstance(value, torch.Tensor):
        out.append(tuple(int(d) for d in value.shape))
    elif depth < 50 and isinstance(value, (list, tuple)):
        for v in value:
            _shapes_from_value(v, out, depth + 1)
    elif depth < 50 and isinstance(value, dict):
        for v in value.values():
            _shapes_from_value(v, out, depth + 1)


# --------------------------------------------------------------------------------------------------
# rebind


@contextlib.contextmanager
def _rebound(rebind: Sequence[tuple[object, str, object]]) -> Iterator[None]:
    missing = object()
    saved: list[tuple[object, str, object]] = []
    try:
        for namespace, name, replacement in rebind:
            saved.append((namespace, name, getattr(namespace, name, missing)))
            setattr(namespace, name, replacement)
        yield
    finally:
        for namespace, name, old in reversed(saved):
            if old is missing:
                with contextlib.suppress(AttributeError):
                    delattr(namespace, name)
            else:
                setattr(namespace, name, old)


# --------------------------------------------------------------------------------------------------
# capture


def _split_label(label: str) -> tuple[str, int]:
    address, _, index = label.rpartition(":")
    return address, int(index)


def _join(base: str, rest: str) -> str:
    if not rest:
        return base
    return rest if base == "" else f"{base}.{rest}"


def capture(
    fn: Any,
    args: Any = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    model: nn.Module,
    rebind: Sequence[tuple[object, str, object]] = (),
) -> CallTree:
    """Trace ``fn(*args, **kwargs)`` with TorchLens (metadata only) and return its :class:`CallTree`.

    ``fn`` is ``model`` (or a submodule of it) or a bound method of one (``model.generate``);
    ``model`` is the root whose ``named_modules()`` defines the addresses; TorchLens instruments only
    ``fn``'s own module subtree (a submodule ``fn`` that calls a module outside its subtree makes
    TorchLens re-run the forward, refused below). ``args`` is the tuple of positional arguments (a
    single non-tuple value is one positional argument). ``rebind`` lists ``(namespace, attribute,
    replacement)`` set with ``setattr`` for the duration of the trace only and always restored (also on
    error; an attribute that did not exist is deleted again), e.g. ``[(clip_module, "quick_gelu",
    plain_quick_gelu)]``. Runs under ``torch.no_grad()``. Raises :class:`CaptureError` when TorchLens is
    missing, when ``fn`` is not ``model``/a submodule/a bound method of one, when the trace fails
    (the original exception is chained), when activations were saved, when the forward ran twice
    (``rescue_rerun``), or when the trace is internally inconsistent (op totals, parent/child links).
    """
    try:
        import torchlens
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CaptureError(
            "torchlens is not installed: the TorchLens capture needs `pip install torchlens>=2.36`"
        ) from exc

    # ---- address mapping
    module_addr: dict[int, str] = {}
    class_names: dict[str, str] = {}
    for address, mod in model.named_modules():
        module_addr.setdefault(id(mod), address)
        class_names[address] = type(mod).__name__

    method: str | None = None
    if isinstance(fn, nn.Module):
        if id(fn) not in module_addr:
            raise CaptureError(f"capture: fn ({type(fn).__name__}) is not a submodule of model")
        base = module_addr[id(fn)]
        root_address = base
    elif getattr(fn, "__self__", None) is not None and isinstance(fn.__self__, nn.Module):
        owner = fn.__self__
        if id(owner) not in module_addr:
            raise CaptureError(
                f"capture: the owner of {fn.__name__} ({type(owner).__name__}) is not a submodule of model"
            )
        method = str(fn.__name__)
        base = module_addr[id(owner)]
        root_address = method_root_address(method)
        if root_address in class_names:  # pragma: no cover - impossible for real module names
            raise CaptureError(f"capture: address {root_address!r} clashes with a module address")
    else:
        raise CaptureError(
            f"capture: fn must be an nn.Module or a bound method of one, got {type(fn).__name__}"
        )

    def map_address(tl_address: str) -> str:
        if tl_address == _TL_ROOT:
            return root_address
        if method is None:
            mapped = _join(base, tl_address)
        elif tl_address == _TL_OWNER:
            mapped = base
        elif tl_address.startswith(_TL_OWNER + "."):
            mapped = _join(base, tl_address[len(_TL_OWNER) + 1 :])
        else:
            raise CaptureError(
                f"capture: unexpected TorchLens address {tl_address!r} in a bound-method trace"
            )
        if mapped not in class_names:
            raise CaptureError(
                f"capture: TorchLens address {tl_address!r} maps to {mapped!r}, "
                "which is not in model.named_modules()"
            )
        return mapped

    def map_label(label: str) -> CallKey:
        address, index = _split_label(label)
        return map_address(address), index

    # ---- trace
    if not isinstance(args, (tuple, list)):
        args = (args,)
    args = tuple(args)
    kwargs = dict(kwargs or {})
    try:
        from torchlens.errors import ScalarEscapeWarning
    except ImportError:  # pragma: no cover
        ScalarEscapeWarning = Warning  # type: ignore[assignment,misc]

    try:
        with _rebound(rebind), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ScalarEscapeWarning)
            tr = torchlens.trace(
                fn,
                args if args else None,
                input_kwargs=kwargs or None,
                capture=metadata_only_options(),
            )
    except CaptureError:
        raise
    except Exception as exc:
        raise CaptureError(
            f"TorchLens trace of {getattr(fn, '__qualname__', type(fn).__name__)} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    try:
        return _convert(tr, map_address, map_label, root_address, args, kwargs, class_names, method)
    finally:
        with contextlib.suppress(Exception):
            tr.cleanup()


def _convert(tr, map_address, map_label, root_address, args, kwargs, class_names, method) -> CallTree:
    rerun = getattr(tr, "rescue_rerun", None)
    if rerun is not None:
        detail = ""
        if isinstance(rerun, Mapping):
            detail = (
                f" (trigger={rerun.get('trigger')!r}, forward_runs={rerun.get('forward_runs')!r},"
                f" residual_signal={rerun.get('residual_signal')!r})"
            )
        raise CaptureError(
            "TorchLens ran the forward twice (trace.rescue_rerun is set"
            f"{detail}): any event stream recorded during this capture is doubled and the trace "
            "cannot be merged. Usual causes: a TorchScript function in the model (rebind it to plain "
            "Python with rebind=[(namespace, name, replacement)]), or a torch function patched or "
            "bound by name before TorchLens wrapped torch (call "
            "torchlens.backends.torch.wrappers.wrap_torch() before patching)."
        )
    saved = {
        "num_saved_ops": getattr(tr, "num_saved_ops", 0),
        "num_saved_layers": getattr(tr, "num_saved_layers", 0),
        "num_saved_module_calls": getattr(tr, "num_saved_module_calls", 0),
    }
    if any(saved.values()):
        raise CaptureError(f"TorchLens saved activations in a metadata-only capture: {saved}")

    # own ops per call label
    own_ops: dict[str, int] = {}
    root_tl_label: str | None = None
    for mc in tr.module_calls:
        if mc.call_parent is None:
            if root_tl_label is not None:
                raise CaptureError(
                    f"TorchLens trace has two root calls: {root_tl_label} and {mc.call_label}"
                )
            root_tl_label = mc.call_label
    if root_tl_label is None:
        raise CaptureError("TorchLens trace has no root call")
    total = 0
    for op in tr.ops:
        if op.is_input or op.is_output or op.is_buffer:
            continue
        label = op.module if op.module is not None else root_tl_label
        own_ops[label] = own_ops.get(label, 0) + 1
        total += 1
    if total != tr.num_ops:
        raise CaptureError(f"TorchLens op count mismatch: {total} ops listed, trace.num_ops={tr.num_ops}")

    root_shapes: list[tuple[int, ...]] = []
    _shapes_from_value(list(args), root_shapes)
    _shapes_from_value(kwargs, root_shapes)

    calls: dict[CallKey, TracedCall] = {}
    for mc in tr.module_calls:
        key = map_label(mc.call_label)
        if key in calls:
            raise CaptureError(f"two TorchLens calls map to {key[0]!r}:{key[1]}")
        if mc.call_parent is None:
            shapes = root_shapes
            parent = None
        else:
            shapes = _shapes_from_summary(mc.forward_args_summary) + _shapes_from_summary(
                mc.forward_kwargs_summary
            )
            parent = map_label(mc.call_parent)
        address = key[0]
        if address == root_address and method is not None:
            owner_cls = class_names[map_address(_TL_OWNER)]
            class_name = f"{owner_cls}.{method}"
        else:
            class_name = class_names[address]
        calls[key] = TracedCall(
            address=address,
            index=key[1],
            class_name=class_name,
            parent=parent,
            children=tuple(map_label(c) for c in mc.call_children),
            input_shapes=tuple(shapes),
            num_ops=own_ops.pop(mc.call_label, 0),
        )
    if own_ops:
        raise CaptureError(f"TorchLens ops attributed to unknown module calls: {sorted(own_ops)}")

    root = map_label(root_tl_label)
    # consistency: every parent/child link is mutual and every call reachable from the root
    for call in calls.values():
        for child in call.children:
            if child not in calls or calls[child].parent != call.key:
                raise CaptureError(f"inconsistent TorchLens call tree at {call.label} -> {child}")
    reached = 0
    stack = [root]
    while stack:
        reached += 1
        stack.extend(calls[stack.pop()].children)
    if reached != len(calls):
        raise CaptureError(f"TorchLens call tree: {len(calls) - reached} calls unreachable from the root")

    module_addresses = list(class_names)
    static_children: dict[str, list[str]] = {a: [] for a in module_addresses}
    for address in module_addresses:
        if address:
            parent_address = address.rpartition(".")[0]
            static_children.setdefault(parent_address, []).append(address)
    called = {c.address for c in calls.values()}
    uncalled = tuple(a for a in module_addresses if a not in called)
    all_class_names = dict(class_names)
    if method is not None:
        owner_address = map_address(_TL_OWNER)
        static_children[root_address] = [owner_address]
        all_class_names[root_address] = calls[root].class_name

    return CallTree(
        root=root,
        calls=calls,
        static_children={a: tuple(c) for a, c in static_children.items()},
        class_names=all_class_names,
        uncalled=uncalled,
        method=method,
        num_ops=total,
    )
