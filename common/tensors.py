"""The one rule for finding the tensors in a call's arguments, shared by the recorder and the TorchLens capture.

Tensors are found depth-first in order; lists, tuples and mappings (a `ModelOutput` too) are searched, any other
object (a KV cache) is not. It is TorchLens's rule for its call summaries, so event input shapes and trace input
shapes can be compared one to one (docs/torchlens.md#input-shapes).

    >>> import torch
    >>> [(name, tuple(t.shape)) for name, t in tensor_leaves({"x": torch.ones(2, 3), "pair": (torch.ones(1), 4)})]
    [('x', (2, 3)), ('pair.0', (1,))]
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 50  # deeper nesting is not searched (no real model argument comes near it)


def tensor_leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, tensor) pairs in `value`: names join keys and positions with dots (`past.0`)."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, _tensor()):
        out.append((prefix, value))
    elif isinstance(value, _CONTAINERS):
        _collect(value, prefix, 0, out)
    return out


def call_leaves(args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    """`tensor_leaves(args) + tensor_leaves(kwargs)` in one pass: the tensors a call receives, positional first.
    Cheap enough for every recorded call: a name is built only for a tensor or a container."""
    out: list[tuple[str, Any]] = []
    if args:
        _collect(args, "", 0, out)
    if kwargs:
        _collect(kwargs, "", 0, out)
    return out


_CONTAINERS = (list, tuple, dict)
_POSITIONS = tuple(str(i) for i in range(64))
_TENSOR: list[type] = []


def _tensor() -> type:
    if not _TENSOR:
        import torch

        _TENSOR.append(torch.Tensor)
    return _TENSOR[0]


def _collect(item: Any, name: str, depth: int, out: list[tuple[str, Any]]) -> None:
    tensor = _TENSOR[0] if _TENSOR else _tensor()
    if isinstance(item, dict):
        pairs: Any = item.items()
    elif not name and len(item) <= len(_POSITIONS):
        pairs = zip(_POSITIONS, item)
    else:
        pairs = enumerate(item)
    for key, value in pairs:
        if isinstance(value, tensor):
            out.append((f"{name}.{key}" if name else str(key), value))
        elif depth < MAX_DEPTH and isinstance(value, _CONTAINERS):
            _collect(value, f"{name}.{key}" if name else str(key), depth + 1, out)


def shapes(value: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors in `value`, in `tensor_leaves` order."""
    return [tuple(int(d) for d in t.shape) for _, t in tensor_leaves(value)]
