"""Module addresses as patterns: `model.layers.3.mlp` -> `model.layers.*.mlp` (every index becomes `*`).

    >>> node_pattern("model.layers.3.mlp.experts.12")
    'model.layers.*.mlp.experts.*'
"""

from __future__ import annotations

import re

_INDEX = re.compile(r"\.\d+(?=\.|$)")


def node_pattern(address: str) -> str:
    """`address` with each numeric component replaced by `*`."""
    return _INDEX.sub(".*", address)
