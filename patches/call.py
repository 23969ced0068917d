"""The running call the recorder hands to a config's extractors (model_configs/README.md lists what they may read).

A `Call` lives from its module's forward start to its end; then it drops what could keep tensors or a subtree alive.

    >>> call = Call(None, 1, 0, 0, "prefill", None, lambda x, scale=2: x, (3,), {}, None, {})
    >>> call.arg("x"), call.arg("scale", 2)
    (3, 2)
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


_POSITIONS: dict[Any, dict[str, int]] = {}


def _positions(fn: Callable[..., Any]) -> dict[str, int]:
    """Position of each positional parameter of a forward (bound: without self), cached per function."""
    key = getattr(fn, "__func__", fn)
    found = _POSITIONS.get(key)
    if found is None:
        try:
            names = [p.name for p in inspect.signature(fn).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            names = []
        found = _POSITIONS[key] = {name: i for i, name in enumerate(names)}
    return found


class Call:
    """One running call, handed to extractors: `lane` is filled by `on_enter`, then by `on_exit`; `children` are the
    finished calls it made so far (their `address`, `index`, `role`, `stage`, `lane`); `inputs` are the
    (name, shape, dtype, device) of its tensor arguments, read when it started, before the forward could change them.
    A finished call drops its arguments, module, forward and children, so it never keeps an argument, a result or a
    subtree alive (its `binding` names the module, which the model holds anyway). `start`:
    ns from the session's clock origin to the start of its forward; `label`: its profiler label while it runs, when
    the session profiles (patches/profiling.py)."""

    __slots__ = ("binding", "index", "seq", "step", "phase", "module", "forward", "args", "kwargs", "parent", "state",
                 "lane", "children", "inputs", "start", "label")

    def __init__(self, binding: Any, index: int, seq: int, step: int, phase: str, module: Any,
                 forward: Callable[..., Any], args: tuple, kwargs: dict, parent: Call | None, state: dict[str, Any],
                 inputs: tuple = ()):
        self.binding, self.index, self.seq, self.step, self.phase = binding, index, seq, step, phase
        self.module = module
        self.forward, self.args, self.kwargs, self.parent, self.state, self.inputs = forward, args, kwargs, parent, \
            state, inputs
        self.lane: dict[str, Any] = {}
        self.children: list[Call] = []

    @property
    def address(self) -> str:
        return self.binding.address

    @property
    def role(self) -> str:
        return self.binding.target.role

    @property
    def stage(self) -> str | None:
        return self.binding.target.stage

    def arg(self, name: str, default: Any = None) -> Any:
        """An argument by name, whether it was passed by keyword or by position."""
        if name in self.kwargs:
            return self.kwargs[name]
        i = _positions(self.forward).get(name)
        return self.args[i] if i is not None and i < len(self.args) else default

    def calls_before_in_parent(self) -> int:
        """How many calls of this address the parent call made before this one (0 for the first)."""
        if self.parent is None:
            return 0
        return sum(1 for c in self.parent.children if c.address == self.address)
