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
    return _leaves(value, prefix, False)


def call_metas(args: tuple, kwargs: dict) -> tuple[tuple[Any, ...], ...]:
    """(name, shape, dtype, device) of the tensors a call receives (`tensor_leaves(args) + tensor_leaves(kwargs)`,
    positional first) as torch gives them, in one pass: a hashable key, what the recorder reads per call. Cheap
    enough for every recorded call: a name is built only for a tensor or a container."""
    out: list[tuple[Any, ...]] = []
    if args:
        _collect(args, "", 0, out, True)
    if kwargs:
        _collect(kwargs, "", 0, out, True)
    return tuple(out)


def result_metas(value: Any) -> tuple[tuple[Any, ...], ...]:
    """`call_metas` of what a call returned (`tensor_leaves` order)."""
    return tuple(_leaves(value, "", True))


def _leaves(value: Any, prefix: str, metas: bool) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(value, _TENSOR[0] if _TENSOR else _tensor()):
        out.append((prefix, value.shape, value.dtype, value.device) if metas else (prefix, value))
    elif isinstance(value, _CONTAINERS):
        _collect(value, prefix, 0, out, metas)
    return out


_CONTAINERS = (list, tuple, dict)
_POSITIONS = tuple(str(i) for i in range(64))
_TENSOR: list[type] = []


def _tensor() -> type:
    if not _TENSOR:
        import torch

        _TENSOR.append(torch.Tensor)
    return _TENSOR[0]


def _collect(item: Any, name: str, depth: int, out: list[tuple[Any, ...]], metas: bool = False) -> None:
    """Append (name, tensor), or with `metas` (name, shape, dtype, device), for each tensor in `item`."""
    tensor = _TENSOR[0] if _TENSOR else _tensor()
    if isinstance(item, dict):
        pairs: Any = item.items()
    elif not name and len(item) <= len(_POSITIONS):
        pairs = zip(_POSITIONS, item)
    else:
        pairs = enumerate(item)
    for key, value in pairs:
        if isinstance(value, tensor):
            path = f"{name}.{key}" if name else str(key)
            out.append((path, value.shape, value.dtype, value.device) if metas else (path, value))
        elif depth < MAX_DEPTH and isinstance(value, _CONTAINERS):
            _collect(value, f"{name}.{key}" if name else str(key), depth + 1, out, metas)


def shapes(value: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors in `value`, in `tensor_leaves` order."""
    return [tuple(int(d) for d in t.shape) for _, t in tensor_leaves(value)]
