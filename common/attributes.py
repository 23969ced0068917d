"""Reversible attribute swaps: the one way loopmeta replaces an attribute and puts the identical object back.

A swap remembers the owner's own entry (`vars(owner)`), not an inherited one: restoring puts that exact object back,
or deletes the attribute again when the owner had none of its own, so inheritance works as before.

    >>> import math
    >>> with swapped((math, "pi", 3)):
    ...     math.pi
    3
    >>> math.pi
    3.141592653589793
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

_ABSENT = object()


@dataclass
class Swap:
    """`owner.name` replaced; `restore()` puts the original back (idempotent)."""

    owner: Any
    name: str
    original: Any
    restored: bool = False

    @classmethod
    def apply(cls, owner: Any, name: str, value: Any) -> "Swap":
        swap = cls(owner, name, vars(owner).get(name, _ABSENT))
        setattr(owner, name, value)
        return swap

    def restore(self) -> None:
        if self.restored:
            return
        if self.original is _ABSENT:
            with contextlib.suppress(AttributeError):
                delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.original)
        self.restored = True


@contextlib.contextmanager
def swapped(*replacements: tuple[Any, str, Any]) -> Iterator[None]:
    """Apply `(owner, name, value)` swaps for the block; restore them in reverse order on every exit path."""
    swaps: list[Swap] = []
    try:
        for owner, name, value in replacements:
            swaps.append(Swap.apply(owner, name, value))
        yield
    finally:
        for swap in reversed(swaps):
            swap.restore()
