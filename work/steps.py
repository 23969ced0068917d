"""The ops of the probed steps, each placed in its step and stage, and the decode-step template that gives the ops
of every later step.

A step is a call of the step address (the model's forward): call k is step k-1. An op outside every step (the
generation loop's own bookkeeping, a vision stage run before the first forward) belongs to the step of the nearest
earlier op inside one, or to step 0. An op's stage is that of its nearest ancestor call the config stages.

Later decode steps repeat the last probed decode step with two differences only (docs/analytic.md#every-step):
dimensions that grow by one per step (the key length) and the MoE routing (expert weights read, from the ledger;
experts that are modules are other addresses each step, so addresses are compared with their indices masked).
`DecodeTemplate` finds the growing dimensions by comparing two probed decode steps op by op; any other difference
makes extrapolation refuse (`ExtrapolationError`), never guess.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from ..common.addresses import node_pattern
from ..errors import ExtrapolationError
from ..probe.ops import Tensor, TracedOp

CallKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PlacedOp:
    """An op with its step and stage; `nth`: how many ops of its func its call ran before it."""

    step: int
    stage: str | None
    op: TracedOp
    nth: int = 0


def place_ops(tree: Any, stage_of: dict[str, str | None], step_address: str) -> list[PlacedOp]:
    """Every op of the probe in execution order with its step and stage."""
    where: dict[CallKey, tuple[int | None, str | None]] = {}

    def locate(key: CallKey) -> tuple[int | None, str | None]:
        if key not in where:
            call = tree.calls[key]
            parent = locate(call.parent) if call.parent is not None else (None, None)
            step = call.index - 1 if call.address == step_address else parent[0]
            stage = stage_of[call.address] if call.address in stage_of else parent[1]
            where[key] = (step, stage)
        return where[key]

    placed, last, nth = [], 0, Counter[tuple[CallKey, str]]()
    for op in tree.ops:
        step, stage = locate(op.call)
        last = step if step is not None else last
        placed.append(PlacedOp(last, stage, op, nth[(op.call, op.func)]))
        nth[(op.call, op.func)] += 1
    return placed


def _grow(tensor: Tensor, growing: tuple[int, ...], by: int) -> Tensor:
    if not growing:
        return tensor
    return replace(tensor, shape=tuple(d + by if i in growing else d for i, d in enumerate(tensor.shape)))


@dataclass(frozen=True)
class _Slot:
    """One op of the template and, per tensor (inputs, params, output), the dimensions that grow per step."""

    placed: PlacedOp
    inputs: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]

    def at(self, offset: int) -> TracedOp:
        """The op `offset` steps after the template's step."""
        op = self.placed.op
        if not offset or not self.grows:
            return op
        return replace(op, inputs=tuple(_grow(t, g, offset) for t, g in zip(op.inputs, self.inputs)),
                       output=_grow(op.output, self.output, offset))

    @property
    def grows(self) -> bool:
        return any(self.inputs) or bool(self.output)


class DecodeTemplate:
    """The ops of a whole decode step and how their shapes change one step later, learnt from probed decode steps
    `first` and `first + 1`; `final` is how many of them the session's last step runs (it stops after its forward
    and the stop check: no inputs are prepared for a next step), learnt from the probe's own last step."""

    def __init__(self, placed: list[PlacedOp], first: int, last_probed: int):
        before = [p for p in placed if p.step == first]
        after = [p for p in placed if p.step == first + 1]
        if len(before) != len(after):
            raise ExtrapolationError(f"decode steps {first} and {first + 1} ran {len(before)} and {len(after)} ops: "
                                     "their structure differs, so later steps cannot be derived from them")
        self.first = first + 1
        self.slots = [self._slot(a, b) for a, b in zip(before, after)]
        tail = [p for p in placed if p.step == last_probed]
        if len(tail) > len(self.slots) or any(
                (p.op.func, node_pattern(p.op.call[0])) != (s.placed.op.func, node_pattern(s.placed.op.call[0]))
                for p, s in zip(tail, self.slots)):
            raise ExtrapolationError(f"the probe's last step {last_probed} does not run a prefix of the ops of decode "
                                     f"step {first + 1}")
        self.final = len(tail)

    @staticmethod
    def _slot(a: PlacedOp, b: PlacedOp) -> _Slot:
        where = f"op {b.op.func} in {b.op.call[0] or '<root>'}"
        if (a.op.func, node_pattern(a.op.call[0]), a.stage, len(a.op.inputs), a.op.output_index) != \
                (b.op.func, node_pattern(b.op.call[0]), b.stage, len(b.op.inputs), b.op.output_index):
            raise ExtrapolationError(f"decode steps differ at {where}: {a.op.func} in {a.op.call[0]!r} before")

        def growing(x: Tensor, y: Tensor) -> tuple[int, ...]:
            if len(x.shape) != len(y.shape) or x.dtype != y.dtype:
                raise ExtrapolationError(f"decode steps differ at {where}: {x.shape} {x.dtype} then {y.shape}")
            out = tuple(i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q)
            if any(y.shape[i] != x.shape[i] + 1 for i in out):
                raise ExtrapolationError(f"decode steps differ at {where}: shape {x.shape} then {y.shape} (only a "
                                         "dimension that grows by one per step can be derived)")
            return out

        if [p.shape for p in a.op.params] != [p.shape for p in b.op.params]:
            raise ExtrapolationError(f"decode steps differ at {where}: other parameters read")
        return _Slot(b, tuple(growing(x, y) for x, y in zip(a.op.inputs, b.op.inputs)),
                     growing(a.op.output, b.op.output))

    def growing_operands(self) -> list[tuple[PlacedOp, int, int]]:
        """(op, input index, dimension) of every input that grows by one per step."""
        return [(s.placed, i, dims[0]) for s in self.slots for i, dims in enumerate(s.inputs) if dims]

    def constant_and_growing(self, final: bool) -> tuple[list[PlacedOp], list[_Slot]]:
        """The ops whose shapes never change, and the slots that grow (recomputed per step), of a whole step or of
        the session's `final` one."""
        slots = self.slots[:self.final] if final else self.slots
        return [s.placed for s in slots if not s.grows], [s for s in slots if s.grows]
