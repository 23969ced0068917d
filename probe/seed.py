"""The earlier pipeline's four seed fields, computed from a TorchLens `CallTree` (probe/capture.py).

The root module is `""` (as in `named_modules()`), so an edge from the root reads `"->lm_head"`; a traced bound
method's synthetic root is `"<generate>"`.

- `call_counts[a]`: calls of `a` (every called address; uncalled modules are absent).
- `edges["p->c"]`: calls of `c` whose parent call is a call of `p` (dynamic parent calls, never op chains).
- `op_call_counts[a]`: ops whose innermost module call is a call of `a` (root-level ops count under the root).
- `module_children[a]`: direct static children of `a`, uncalled ones included (`[]` for leaves).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..merge.calltree import counts, from_trace


def edge_key(parent: str, child: str) -> str:
    return f"{parent}->{child}"


def seed_fields(tree: Any) -> dict[str, Any]:
    edges: Counter[str] = Counter()
    op_call_counts: Counter[str] = Counter()
    for call in tree.walk():
        op_call_counts[call.address] += call.num_ops
        if call.parent is not None:
            edges[edge_key(call.parent[0], call.address)] += 1
    return {"call_counts": counts(from_trace(tree)), "edges": dict(edges), "op_call_counts": dict(op_call_counts),
            "module_children": {a: list(children) for a, children in tree.static_children.items()}}
