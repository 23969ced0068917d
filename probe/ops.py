"""The torch ops of a TorchLens trace as small neutral records: what work accounting needs, nothing else.

`traced_ops(trace, address_of, root)` turns every op of a metadata-only trace into a `TracedOp`: its function, the
module call it ran in, the tensors it read (shape, element size, and the parameter behind it when the tensor is a
parameter or a view of one), the parameters it read directly and its output. TorchLens keeps no argument shapes
when it saves nothing, so each input's shape is its parent op's output shape (docs/torchlens.md#ops).

Invariant: ops are in execution order, pseudo-ops (input, output, buffer) are dropped, and every parent an op names
resolves to an op of the same trace (or `CaptureError`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CaptureError

CallKey = tuple[str, int]

# Ops that return a view of their input: no bytes move, and a view of a parameter is still that parameter.
VIEW_FUNCS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "expand", "expand_as", "unsqueeze",
    "squeeze", "flatten", "unflatten", "narrow", "select", "unbind", "chunk", "split", "tensor_split", "detach",
    "as_strided", "alias", "movedim", "swapaxes", "__getitem__", "diagonal", "identity", "unfold"})


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor an op reads or writes: shape, dtype, and the parameter it is (or is a view of), if any; `whole`
    when it spans that whole parameter (a slice of stacked expert weights does not)."""

    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ...
    itemsize: int
    param: str | None = None  # parameter address rooted at the model
    whole: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True, slots=True)
class TracedOp:
    """One torch op of a trace. `inputs`: tensor arguments in argument order (positional, then keyword);
    `params`: parameters read directly (a `Linear`'s weight and bias); `output_index`: which output of a
    multi-output op this record is (None for single-output ops; TorchLens lists each output as its own op)."""

    func: str
    call: CallKey  # the innermost module call the op ran in (the trace's root call for root-level ops)
    inputs: tuple[Tensor, ...]
    params: tuple[Tensor, ...]
    output: Tensor
    output_index: int | None = None
    equation: str | None = None  # einsum only


def _tensor(shape: Any, dtype: Any, param: str | None = None, whole: bool = False) -> Tensor:
    size = getattr(dtype, "itemsize", None)
    if not isinstance(size, int):
        raise CaptureError(f"TorchLens op with an unknown dtype {dtype!r}")
    return Tensor(tuple(int(d) for d in shape or ()), str(dtype).removeprefix("torch."), size, param, whole)


def _positions(arg_positions: dict[str, Any]) -> list[str]:
    """Parent labels in argument order: positional (nested positions in order), then keywords."""
    args = arg_positions.get("args", {}) or {}
    ordered = [args[k] for k in sorted(args, key=lambda k: k if isinstance(k, tuple) else (k,))]
    return ordered + list((arg_positions.get("kwargs", {}) or {}).values())


def traced_ops(trace: Any, address_of: Callable[[str], str], call_of: Callable[[str], CallKey],
               root: CallKey) -> tuple[TracedOp, ...]:
    """Every real op of `trace` as a `TracedOp`. `address_of` maps a TorchLens module address to a model address,
    `call_of` a TorchLens call label to a call key; root-level ops belong to `root`."""
    by_label: dict[str, Any] = {}
    for op in trace.ops:
        for label in {op.label, op.layer_label}:
            by_label[label] = op
    weight_views: dict[str, tuple[str, int]] = {}  # op label -> (parameter address, its numel), views of one
    out: list[TracedOp] = []
    for op in trace.ops:
        if op.is_input or op.is_output or op.is_buffer:
            continue
        params = tuple(_tensor(p.shape, p.dtype, _param_address(p, address_of), True) for p in op.params)
        inputs = []
        for label in _positions(op.parent_arg_positions or {}):
            parent = by_label.get(label)
            if parent is None:
                raise CaptureError(f"TorchLens op {op.label} names an unknown parent {label!r}")
            source, numel = weight_views.get(parent.label, (None, 0))
            tensor = _tensor(parent.shape, parent.dtype, source)
            inputs.append(tensor if source is None else _tensor(parent.shape, parent.dtype, source,
                                                                tensor.numel == numel))
        if op.func_name in VIEW_FUNCS:
            if params:
                weight_views[op.label] = (params[0].param, params[0].numel)
            elif inputs and inputs[0].param:
                weight_views[op.label] = weight_views[by_label[_positions(op.parent_arg_positions)[0]].label]
        equation = None
        if op.func_name == "einsum":
            equation = next((a for a in op.func_non_tensor_args or () if isinstance(a, str)), None)
        out.append(TracedOp(
            func=op.func_name, call=call_of(op.module) if op.module is not None else root, inputs=tuple(inputs),
            params=params, output=_tensor(op.shape, op.dtype),
            output_index=op.multi_output_index, equation=equation))
    return tuple(out)


def _param_address(param: Any, address_of: Callable[[str], str]) -> str:
    module = address_of(param.module_address)
    return f"{module}.{param.name}" if module and not module.startswith("<") else param.name
