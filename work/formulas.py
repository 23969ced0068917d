"""Work of one torch op from its shapes: FLOPs, activation bytes read and written, weights read.

FLOPs follow `torch.utils.flop_counter`: a product of an (M, K) by a (K, N) operand is 2*M*N*K (a bias add is not
counted), a convolution is 2 * batch * (output positions) * (weight elements), attention is its two products.
Every other op has 0 FLOPs and is counted in bytes only. Bytes are those of the op as written, unfused: it reads its
tensor inputs and writes its output; views move nothing. A parameter (or a view of one) is a weight, not an
activation; an embedding lookup reads only the rows it gathers. Conventions and their limits: docs/analytic.md.

    >>> from loopmeta.probe.ops import Tensor, TracedOp
    >>> x = Tensor((4, 8), "float32", 4)
    >>> w = Tensor((16, 8), "float32", 4, "proj.weight", True)
    >>> work = op_work(TracedOp("linear", ("proj", 1), (x,), (w,), Tensor((4, 16), "float32", 4)))
    >>> (work.cls, work.flops, work.act_read, work.act_written, work.weights)
    ('matmul', 1024, 128, 256, (('proj.weight', 512, True),))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..probe.ops import VIEW_FUNCS, TracedOp

_MATMUL = {"linear": 0, "matmul": 0, "__matmul__": 0, "__rmatmul__": 1, "mm": 0, "bmm": 0, "addmm": 1,
           "baddbmm": 1}  # function -> position of the left operand among the tensor inputs
_GROUPED = {"_grouped_mm", "grouped_mm"}
_CONV = re.compile(r"^conv(_transpose)?[123]d$")
_ATTENTION = {"scaled_dot_product_attention"}
_NORM = {"layer_norm", "rms_norm", "group_norm", "batch_norm", "instance_norm"}
_EMBEDDING = {"embedding"}
_CASTS = {"to", "type", "type_as", "float", "half", "bfloat16", "double", "long", "int", "bool"}
# products loopmeta does not count: their FLOPs are unknown (None), and the report lists them
UNCOUNTED_PRODUCTS = frozenset({"mv", "dot", "vdot", "addmv", "addbmm", "addr", "outer", "ger", "inner",
                                "tensordot", "bilinear", "chain_matmul", "multi_dot", "kron", "cdist"})


@dataclass(frozen=True, slots=True)
class OpWork:
    """The work of one op. `flops` is None for a product loopmeta cannot count (`UNCOUNTED_PRODUCTS`, an einsum
    that is not one product). `weights`: (parameter address, bytes read, whole parameter?)."""

    cls: str
    flops: int | None
    act_read: int
    act_written: int
    weights: tuple[tuple[str, int, bool], ...]


def classify(op: TracedOp) -> str:
    f = op.func
    if f in _MATMUL or f == "einsum" or f in UNCOUNTED_PRODUCTS:
        return "matmul"
    if f in _GROUPED:
        return "grouped_matmul"
    if _CONV.match(f):
        return "conv"
    if f in _ATTENTION:
        return "attention"
    if f in _EMBEDDING:
        return "embedding"
    if f in _NORM:
        return "norm"
    if f in VIEW_FUNCS or (f in _CASTS and op.inputs and not op.inputs[0].param and op.inputs[0].dtype ==
                           op.output.dtype and op.inputs[0].shape == op.output.shape):
        return "view"  # a cast to the dtype a tensor already has returns it unchanged
    return "elementwise"


def flops(op: TracedOp, cls: str) -> int | None:
    """FLOPs of `op` (class `cls`) by the flop_counter conventions; 0 for non-products; None when unknown."""
    tensors = op.inputs + op.params
    if cls in ("matmul", "grouped_matmul"):
        if op.func == "einsum":
            return _einsum_flops(op)
        if op.func in UNCOUNTED_PRODUCTS or not op.inputs:
            return None
        left = op.inputs[_MATMUL.get(op.func, 0)] if len(op.inputs) > _MATMUL.get(op.func, 0) else None
        if left is None or not left.shape:
            return None
        return 2 * op.output.numel * left.shape[-1]
    if cls == "conv":
        weight = next((t for t in tensors[1:] if len(t.shape) == len(tensors[0].shape)), None) if tensors else None
        if weight is None:
            return None
        x = op.inputs[0]
        batched = len(x.shape) == len(weight.shape)
        positions = (x.shape if "transpose" in op.func else op.output.shape)[2 if batched else 1:]
        return 2 * (x.shape[0] if batched else 1) * math.prod(positions) * weight.numel
    if cls == "attention":
        if len(op.inputs) < 3:
            return None
        q, k, v = op.inputs[:3]
        return 2 * math.prod(q.shape[:-2]) * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return 0


def _einsum_flops(op: TracedOp) -> int | None:
    """2 x the product of every index size, when the einsum is one product of two operands (each summed index
    appears in both); else None."""
    if not op.equation or "..." in op.equation or len(op.inputs) != 2 or "->" not in op.equation:
        return None
    lhs, result = op.equation.replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or any(len(t) != len(x.shape) for t, x in zip(terms, op.inputs)):
        return None
    sizes: dict[str, int] = {}
    for term, x in zip(terms, op.inputs):
        sizes.update(zip(term, x.shape))
    if any(i not in result and not (i in terms[0] and i in terms[1]) for i in sizes):
        return None
    return 2 * math.prod(sizes.values())


def op_work(op: TracedOp) -> OpWork:
    """The work of `op`: class, FLOPs, activation bytes read (once per op, on its first output), written, weights."""
    cls = classify(op)
    if cls == "view":
        return OpWork(cls, 0, 0, 0, ())
    first = op.output_index in (None, 0)
    weights = [(t.param, t.nbytes, t.whole) for t in op.inputs + op.params if t.param] if first else []
    if cls == "embedding":
        weights = [(t.param, op.output.nbytes, False) for t in op.params[:1]]
    reads = sum(t.nbytes for t in op.inputs if not t.param) if first else 0
    return OpWork(cls, flops(op, cls) if first else 0, reads, op.output.nbytes, tuple(weights))
