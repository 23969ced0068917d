"""GEMM shapes of the probed steps: every `nn.Linear` call as (M, N, K), grouped by step, stage and node pattern
(`model.layers.*.self_attn.q_proj`: indices become `*`).

What analytic models multiply by the loop bounds: a Linear call on an input [..., K] with weight [N, K] is one GEMM
with M = the product of the leading input dimensions. Calls come from the TorchLens probe (per-call input shapes);
a call's stage is that of its nearest instrumented ancestor in the config. Only `nn.Linear` modules are counted:
experts stored as 3-D weight tensors (DeepSeek-OCR 2) are no modules; use the MoE ledger's tokens per expert.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from ..common.addresses import node_pattern



def gemm_table(tree: Any, model: Any, stage_of: dict[str, str | None], step_address: str = "") -> list[dict[str, Any]]:
    """Rows (step, stage, node pattern, M, N, K, weight bytes per element, calls), in order of first appearance;
    the k-th call of `step_address` (the model's forward) is step k-1."""
    import torch

    def step_and_stage(key: tuple[str, int]) -> tuple[int, str | None]:
        stage, found, step, call = None, False, 0, tree.calls[key]
        while call is not None:
            if not found and call.address in stage_of:
                stage, found = stage_of[call.address], True
            if call.address == step_address:
                step = call.index - 1
            call = tree.calls[call.parent] if call.parent is not None else None
        return step, stage

    counts: Counter[tuple] = Counter()
    for call in tree.walk():
        if not call.input_shapes or call.address.startswith("<"):
            continue
        module = model.get_submodule(call.address)
        if not isinstance(module, torch.nn.Linear):
            continue
        shape = call.input_shapes[0]
        step, stage = step_and_stage(call.key)
        row = (step, stage, node_pattern(call.address), math.prod(shape[:-1]), module.out_features,
               module.in_features, module.weight.element_size())
        counts[row] += 1
    return [{"step": r[0], "stage": r[1], "node": r[2], "M": r[3], "N": r[4], "K": r[5], "weight_bytes": r[6],
             "calls": n} for r, n in counts.items()]
