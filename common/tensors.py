"""The one rule for finding the tensors in a call's arguments, shared by the recorder and the TorchLens capture.

Tensors are found depth-first in order; lists, tuples and mappings (a `ModelOutput` too) are searched, any other
object (a KV cache) is not. It is TorchLens's rule for its call summaries, so event input shapes and trace input
shapes can be compared one to one (docs/torchlens.md#input-shapes).

    >>> import torch
    >>> [(name, tuple(t.shape)) for name, t in tensor_leaves({"x": torch.ones(2, 3), "pair": (torch.ones(1), 4)})]
    [('x', (2, 3)), ('pair.0', (1,))]
"""

from __future__ import annotations

from typing import Any, Iterator

MAX_DEPTH = 50  # deeper nesting is not searched (no real model argument comes near it)


def tensor_leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs in `value`: names join keys and positions with dots (`past.0`)."""
    import torch

    stack: list[tuple[Any, str, int]] = [(value, prefix, 0)]
    while stack:
        item, name, depth = stack.pop()
        if isinstance(item, torch.Tensor):
            yield name, item
        elif depth < MAX_DEPTH and isinstance(item, (list, tuple, dict)):
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            children = [(v, f"{name}.{k}" if name else str(k), depth + 1) for k, v in pairs]
            stack.extend(reversed(children))


def shapes(value: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors in `value`, in `tensor_leaves` order."""
    return [tuple(int(d) for d in t.shape) for _, t in tensor_leaves(value)]
