"""Work per step and stage for a whole session: the probed steps as traced, later decode steps from the template.

Weights are counted once per module call (a parameter read twice in one call is read once); a whole stacked-experts
parameter (leading dimension = the MoE block's expert count) is scaled to the experts the ledger says were hit in that
block and step. KV-cache bytes are those of the ops that read the cache (`CacheReads`): they read it and write the
new entries, a fraction queries/keys of it. Conventions: docs/analytic.md.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from ..errors import ExtrapolationError
from ..events.lanes import EXPERTS_TOTAL
from .formulas import OpWork, classify, op_work
from .steps import DecodeTemplate, PlacedOp

TEMPLATE_STEP = 1  # decode steps 1 and 2 give the template; the probe runs one more (pipeline.PROBE_STEPS)
METRICS = ("flops", "weight_bytes", "activation_bytes", "kv_read_bytes", "kv_written_bytes")
Totals = dict[tuple[str, str], list[int]]  # (stage, op class) -> METRICS values


@dataclass
class Ledger:
    """Experts hit per (MoE block address, step), and each block's expert count, from the report's MoE rows (the
    router's address; its parent module is the MoE block)."""

    hits: dict[tuple[str, int], int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, moe: dict[str, Any] | None) -> "Ledger":
        ledger = cls()
        for row in (moe or {}).get("rows", []):
            block = row["address"].rpartition(".")[0]
            ledger.hits[(block, row["step"])] = ledger.hits.get((block, row["step"]), 0) + row["k"]
            if row.get(EXPERTS_TOTAL):
                ledger.totals[block] = row[EXPERTS_TOTAL]
        return ledger

    def block_of(self, call_address: str, shape: tuple[int, ...]) -> str | None:
        """The MoE block whose experts a whole parameter of `shape`, read in `call_address`, stacks; else None."""
        return next((block for block, total in self.totals.items()
                     if shape and shape[0] == total and (call_address + ".").startswith(block + ".")), None)


@dataclass(frozen=True)
class CacheReads:
    """Where attention reads the KV cache. `sdpa`: call addresses whose `scaled_dot_product_attention`, in a probed
    decode step, has more keys than queries (its keys and values are inputs 1 and 2). `operands`: attention written as
    products (eager): (call address, func, nth) -> (input, key-length dimension) of a product whose second input is
    no weight and grows by one per decode step."""

    sdpa: frozenset[str] = frozenset()
    operands: dict[tuple[str, str, int], tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, placed: Iterable[PlacedOp], decode_steps: set[int], template: DecodeTemplate | None) -> "CacheReads":
        sdpa = frozenset(p.op.call[0] for p in placed if p.step in decode_steps
                         and p.op.func == "scaled_dot_product_attention" and len(p.op.inputs) >= 3
                         and p.op.inputs[1].shape[-2] > p.op.inputs[0].shape[-2])
        grown = template.growing_operands() if template is not None else []
        return cls(sdpa, {(p.op.call[0], p.op.func, p.nth): (i, dim) for p, i, dim in grown
                          if i == 1 and not p.op.inputs[1].param and classify(p.op) == "matmul"})

    def __bool__(self) -> bool:
        return bool(self.sdpa or self.operands)

    def bytes(self, p: PlacedOp, cls: str) -> tuple[int, int]:
        """KV bytes (read, written) of op `p`: the cache it reads, and the entries its queries add (queries/keys of
        them: all in prefill, one per query in a decode step)."""
        if cls == "attention" and p.op.call[0] in self.sdpa and len(p.op.inputs) >= 3:
            q, k, v = p.op.inputs[:3]
            read, queries, keys = k.nbytes + v.nbytes, q.shape[-2], k.shape[-2]
        elif (p.op.call[0], p.op.func, p.nth) in self.operands:
            i, dim = self.operands[(p.op.call[0], p.op.func, p.nth)]
            read, queries, keys = p.op.inputs[i].nbytes, p.op.inputs[0].shape[-2], p.op.inputs[i].shape[dim]
        else:
            return 0, 0
        return read, read * queries // keys if keys else 0


class Accountant:
    """Adds ops of one step into (stage, class) totals, with weights deduplicated per call and scaled by the
    ledger. `uncounted[func]` counts ops whose FLOPs are unknown."""

    def __init__(self, ledger: Ledger, cache: CacheReads):
        self.ledger, self.cache = ledger, cache
        self.uncounted: dict[str, int] = defaultdict(int)
        self.unscaled: set[str] = set()  # stacked-expert parameters read whole with no ledger row

    def add(self, totals: Totals, ops: Iterable[PlacedOp], works: Iterable[OpWork] | None = None,
            seen: set[tuple[tuple[str, int], str]] | None = None) -> Totals:
        """Add `ops` (with their `works` when precomputed) into `totals`; `seen`: (call, weight) already counted."""
        seen = set() if seen is None else seen
        for p, w in zip(ops, works) if works is not None else ((p, op_work(p.op)) for p in ops):
            row = totals.setdefault((p.stage or "other", w.cls), [0] * len(METRICS))
            for i, v in enumerate(self.metrics(p, w, seen)):
                row[i] += v
        return totals

    def metrics(self, p: PlacedOp, w: OpWork, seen: set[tuple[tuple[str, int], str]]) -> tuple[int, ...]:
        """The op's METRICS values: unknown FLOPs count 0 (and in `uncounted`); KV bytes leave the activations."""
        if w.flops is None:
            self.uncounted[p.op.func] += 1
        kv_read, kv_written = self.cache.bytes(p, w.cls)
        activations = w.act_read + w.act_written - kv_read
        weights = 0
        for address, nbytes, whole in w.weights:
            if whole:
                if (p.op.call, address) in seen:
                    continue
                seen.add((p.op.call, address))
                nbytes = self._scaled(p, w.cls, address, nbytes)
            weights += nbytes
        return (w.flops or 0, weights, activations, kv_read, kv_written)

    def _scaled(self, p: PlacedOp, cls: str, address: str, nbytes: int) -> int:
        """A whole stacked-experts parameter scaled to the experts hit; one the ledger cannot scale (no row for
        its block and step, or read by a grouped product in a block the ledger does not know) counts whole and is
        named in `unscaled`."""
        shape = next(t.shape for t in p.op.inputs + p.op.params if t.param == address)
        block = self.ledger.block_of(p.op.call[0], shape) if len(shape) >= 3 else None
        hit = self.ledger.hits.get((block, p.step)) if block is not None else None
        if hit is None:
            if block is not None or cls == "grouped_matmul":
                self.unscaled.add(address)
            return nbytes
        return nbytes * hit // self.ledger.totals[block]


@dataclass
class SessionWork:
    """Per (step, stage, class) totals of a session, the probed steps and the notes on what is not counted."""

    totals: dict[int, Totals]
    probed: list[int]
    notes: list[str]
    uncounted: dict[str, int]
    cache: CacheReads


def session_work(placed: list[PlacedOp], phases: dict[int, str], moe: dict[str, Any] | None) -> SessionWork:
    """Totals for every step in `phases` (step -> "prefill" / "decode"). When the probe covered the whole session
    every step is as traced; otherwise steps 0..2 are, and later ones come from the template of decode steps 1-2
    (the probe's last step, which stops, gives the session's last step)."""
    traced = sorted({p.step for p in placed})
    decode = {s for s in traced if phases.get(s) == "decode"}
    template, refused = None, (f"the probe must trace decode steps {TEMPLATE_STEP}..{TEMPLATE_STEP + 2} (it traced "
                               f"steps {traced})")
    try:
        if {TEMPLATE_STEP, TEMPLATE_STEP + 1} <= decode:
            template = DecodeTemplate(placed, TEMPLATE_STEP, max(traced))
    except ExtrapolationError as exc:
        refused = str(exc)
    acct = Accountant(Ledger.of(moe), CacheReads.of(placed, decode, template))
    whole = not phases or max(phases) <= max(traced, default=-1)
    probed = traced if whole else [s for s in traced if s <= TEMPLATE_STEP + 1]
    totals = {step: acct.add({}, [p for p in placed if p.step == step]) for step in probed}
    notes: list[str] = []
    later = sorted(s for s in phases if s > max(probed, default=-1))
    if later and template is not None and max(traced) > TEMPLATE_STEP + 1:
        _extrapolate(template, acct, later, totals)
    elif later:
        notes.append(f"incomplete: the work of steps {later[0]}..{later[-1]} is not counted: {refused}")
    if decode and not acct.cache:
        notes.append("no KV-cache bytes identified (no attention reads more keys than queries in a decode step, or "
                     f"the probe traced fewer than decode steps {TEMPLATE_STEP}..{TEMPLATE_STEP + 1}): cache reads "
                     "count as activation bytes")
    if acct.unscaled:
        notes.append("stacked expert weights counted whole (no MoE ledger row for their block): "
                     + ", ".join(sorted(acct.unscaled)))
    return SessionWork(totals, probed, notes, dict(acct.uncounted), acct.cache)


def _extrapolate(template: DecodeTemplate, acct: Accountant, steps: list[int], totals: dict[int, Totals]) -> None:
    for final in (False, True):
        constant, growing = template.constant_and_growing(final)
        works = [op_work(p.op) for p in constant]
        for step in [s for s in steps if (s == steps[-1]) == final]:
            seen: set[tuple[tuple[str, int], str]] = set()
            acct.add(totals.setdefault(step, {}), [replace(p, step=step) for p in constant], works, seen)
            acct.add(totals[step], [replace(s.placed, step=step, op=s.at(step - template.first)) for s in growing],
                     None, seen)
