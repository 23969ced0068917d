"""Class-level `forward` wrappers: one wrapt wrapper per class, shared by every live instrumentation.

Invariants:
- a class's `forward` is wrapped while at least one bound instance of it is live (reference-counted), and the
  identical original attribute object is put back when the last one goes (common/attributes.py);
- a class that also has instances nobody records (`nn.Linear`, when only `lm_head` is a target) is left alone: its
  recorded instances get an instance-level wrapper instead, so the other instances' calls cost nothing;
- a module whose instance carries its own `forward` (accelerate's hooks put one there) gets that attribute wrapped
  too, so its calls are seen; it is restored with the rest;
- the registries change only under `LOCK`, so instrumenting and uninstrumenting from several threads is safe;
- the wrapper records only calls of instances bound to a live instrumentation and passes every other call straight
  through; a call that re-enters the same instance (a subclass forward calling `super().forward`) is one call;
- nothing the recorder does can raise into the user's forward: a recorder failure is kept as a fault and the call
  runs unrecorded; an exception the forward itself raises goes on unchanged, tagged `errors.MODEL_ERROR`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import wrapt

from ..common.attributes import Swap
from ..errors import MODEL_ERROR, InstrumentationError


@dataclass(frozen=True)
class Binding:
    """One instrumented module: its address, its config target and the target's extractors, bound once; `node` is
    its index in the recorder's node table; `class_level`: every instance of its class in the model is recorded, so
    the class's `forward` is wrapped (otherwise the instance's own)."""

    address: str
    module: Any
    target: Any
    on_enter: Callable[..., Any] | None
    on_exit: Callable[..., Any] | None
    node: int = 0
    class_level: bool = True


@dataclass
class _ClassPatch:
    swap: Swap
    users: int = 0


COMPILED = ("the model ran under torch.compile, whose compiled graphs run without the wrappers: its calls cannot be "
            "recorded. Instrument the model without torch.compile")

LOCK = threading.RLock()
_CLASS_PATCHES: dict[type, _ClassPatch] = {}
_BOUND: dict[int, tuple[Binding, Any]] = {}  # id(module) -> (binding, recorder)
_INSTANCE_SWAPS: dict[int, Swap] = {}  # id(module) -> its wrapped instance-level forward


def _dispatch(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    entry = _BOUND.get(id(instance))
    if entry is None or entry[0].module is not instance:
        return wrapped(*args, **kwargs)
    binding, recorder = entry
    if _IS_COMPILING():  # a compiled graph runs without this wrapper: its calls cannot be counted
        recorder.fault(COMPILED)
        return wrapped(*args, **kwargs)
    try:
        current = recorder.current()
        if current is not None and current.module is instance:
            return wrapped(*args, **kwargs)
        call, token = recorder.enter(binding, instance, wrapped, args, kwargs)
    except Exception as exc:  # never break the host: run the call unrecorded, and say so in the report
        recorder.fault(f"recording {binding.address}: {exc!r}")
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        _exit(recorder, call, token, None, exc, None)
        if not hasattr(exc, MODEL_ERROR):
            with contextlib.suppress(Exception):  # an exception that takes no attributes stays as it is
                setattr(exc, MODEL_ERROR, (recorder.session, call.step))
        raise
    _exit(recorder, call, token, result, None, binding.on_exit)
    return result


def _exit(recorder: Any, call: Any, token: Any, result: Any, error: BaseException | None, on_exit: Any) -> None:
    try:
        recorder.exit(call, token, result, error, on_exit)
    except Exception as exc:
        recorder.fault(f"recording the end of {call.address}:{call.index}: {exc!r}")


def _not_compiling() -> bool:
    return False


_IS_COMPILING: Callable[[], bool] = _not_compiling  # torch.compiler.is_compiling once a module is bound


def bind(bindings: list[Binding], recorder: Any) -> None:
    """Route the calls of these modules to `recorder`: wrap their classes' `forward` where not yet wrapped, and each
    instance-level `forward` (call under `LOCK`). On failure, what was bound is unbound again before raising."""
    global _IS_COMPILING
    import torch

    _IS_COMPILING = torch.compiler.is_compiling
    try:
        for b in bindings:
            _bind_one(b, recorder)
    except BaseException:
        unbind(bindings)
        raise


def _bind_one(b: Binding, recorder: Any) -> None:
    cls = type(b.module)
    own = vars(b.module).get("forward")
    if b.class_level:
        patch = _CLASS_PATCHES.get(cls)
        if patch is None:
            raw = next(vars(k)["forward"] for k in cls.__mro__ if "forward" in vars(k))  # as defined, unbound
            patch = _CLASS_PATCHES[cls] = _ClassPatch(Swap.apply(cls, "forward", wrapt.FunctionWrapper(raw, _dispatch)))
        patch.users += 1
    elif own is None:
        own = b.module.forward  # the class's forward, bound to this instance
    _BOUND[id(b.module)] = (b, recorder)
    if own is not None:
        _INSTANCE_SWAPS[id(b.module)] = Swap.apply(b.module, "forward", _InstanceForward(own, _on(b.module)))


class _InstanceForward(wrapt.FunctionWrapper):
    """A wrapped instance-level `forward`: bound to one module, so it refuses to be copied with it (a copy would
    call the original module)."""

    def __deepcopy__(self, memo: dict) -> Any:
        raise InstrumentationError(_NO_COPY)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise InstrumentationError(_NO_COPY)


_NO_COPY = ("an instrumented module cannot be copied or pickled while its session is live: copy the model before "
            "instrumenting it, or after the session")


def _on(module: Any) -> Callable[..., Any]:
    """A wrapper for an instance-level forward, which wrapt calls without an instance."""
    def wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        return _dispatch(wrapped, module, args, kwargs)
    return wrapper


def unbind(bindings: list[Binding]) -> None:
    """Undo `bind` (call under `LOCK`): a class gets its original `forward` back when its last bound module goes."""
    for b in bindings:
        if _BOUND.pop(id(b.module), None) is None:
            continue
        swap = _INSTANCE_SWAPS.pop(id(b.module), None)
        if swap is not None:
            swap.restore()
        if not b.class_level:
            continue
        cls = type(b.module)
        patch = _CLASS_PATCHES[cls]
        patch.users -= 1
        if patch.users == 0:
            patch.swap.restore()
            del _CLASS_PATCHES[cls]


def bound_elsewhere(modules: list[Any]) -> list[Any]:
    """The modules among `modules` that a live instrumentation already records."""
    return [m for m in modules if id(m) in _BOUND]
