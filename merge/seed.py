"""The earlier pipeline's four seed fields, computed from a :class:`~loopmeta.merge.capture.CallTree`.

Root name: the root module is ``""`` everywhere (as in ``model.named_modules()``), so an edge from the
root reads ``"->lm_head"``. When a bound method was traced (``model.generate``) the root call is the
synthetic ``"<generate>"`` call (see :mod:`loopmeta.merge.capture`): the model's forwards are calls of
``""`` with the parent ``"<generate>"`` (edge ``"<generate>->"``), and the ops ``generate`` runs outside
any module are counted under ``"<generate>"``.

* ``call_counts[a]``: number of calls of ``a`` (every called address; uncalled modules are absent).
* ``edges["p->c"]``: number of calls of ``c`` whose parent call is a call of ``p``. Taken from the call
  tree (dynamic parent calls), never from op chains: a child called 3 times in one parent call counts
  3, a ModuleList container never appears (the parent is the module whose forward ran the loop).
* ``op_call_counts[a]``: ops whose innermost module call is a call of ``a``, for every called address
  (0 for a call that only runs child modules); ops at root level count under the root.
* ``module_children[a]``: direct static children of ``a`` (``named_modules()``), uncalled ones included,
  for every module address (``[]`` for leaves).

All values are plain ``dict`` / ``int`` / ``list`` (JSON-ready).
"""

from __future__ import annotations

from typing import Any

from .capture import CallTree

__all__ = ["edge_key", "seed_fields"]


def edge_key(parent: str, child: str) -> str:
    return f"{parent}->{child}"


def seed_fields(tree: CallTree) -> dict[str, Any]:
    call_counts: dict[str, int] = {}
    edges: dict[str, int] = {}
    op_call_counts: dict[str, int] = {}
    for call in tree.walk():
        call_counts[call.address] = call_counts.get(call.address, 0) + 1
        op_call_counts[call.address] = op_call_counts.get(call.address, 0) + call.num_ops
        if call.parent is not None:
            key = edge_key(call.parent[0], call.address)
            edges[key] = edges.get(key, 0) + 1
    module_children = {a: list(children) for a, children in tree.static_children.items()}
    return {
        "call_counts": call_counts,
        "edges": edges,
        "op_call_counts": op_call_counts,
        "module_children": module_children,
    }
