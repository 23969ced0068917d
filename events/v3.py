"""Version 3 of the events file: one `"kind": "call"` JSON object per call, every field spelled out (events/schema.py
`CallEvent`). loopmeta writes version 4 (events/stream.py) and still reads this one."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..errors import EventFileError
from .lanes import PHASES
from .schema import CallEvent, SessionHeader, TensorMeta


def _metas(metas: tuple[TensorMeta, ...]) -> list[dict[str, Any]]:
    return [{"name": m.name, "shape": list(m.shape), "dtype": m.dtype, "device": m.device} for m in metas]


def _call_dict(e: CallEvent) -> dict[str, Any]:
    """`jsonable(e)` with the same keys in the same order, built directly (lanes hold JSON values)."""
    return {"session": e.session, "seq": e.seq, "step": e.step, "phase": e.phase, "address": e.address,
            "class_name": e.class_name, "call_index": e.call_index,
            "parent": None if e.parent is None else list(e.parent), "role": e.role, "stage": e.stage, "lane": e.lane,
            "inputs": _metas(e.inputs), "outputs": _metas(e.outputs), "device": e.device, "error": e.error}


def call_line(e: CallEvent) -> str:
    """The version-3 line of one call (tests write version-3 streams with it)."""
    return json.dumps({**_call_dict(e), "kind": "call"}, separators=(",", ":"))


_CALL_FIELDS = {f.name for f in dataclasses.fields(CallEvent)}
_REQUIRED = _CALL_FIELDS - {"lane", "inputs", "outputs", "device", "error"}


def _tensor_metas(raw: Any, where: str) -> tuple[TensorMeta, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list")
    out = []
    for t in raw:
        if not isinstance(t, dict) or set(t) != {"name", "shape", "dtype", "device"}:
            raise ValueError(f"{where} entries need exactly name, shape, dtype, device; got {t!r}")
        out.append(TensorMeta(str(t["name"]), tuple(int(d) for d in t["shape"]), str(t["dtype"]), str(t["device"])))
    return tuple(out)


def _event_from_dict(data: dict[str, Any]) -> CallEvent:
    missing = _REQUIRED - set(data)
    if missing:
        raise ValueError(f"missing fields {sorted(missing)}")
    unknown = set(data) - _CALL_FIELDS - {"kind"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    if data["phase"] not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {data['phase']!r}")
    for name in ("seq", "step", "call_index"):
        if type(data[name]) is not int or data[name] < (1 if name == "call_index" else 0):
            raise ValueError(f"{name} must be a non-negative int (call_index >= 1), got {data[name]!r}")
    parent = data["parent"]
    if parent is not None:
        if not (isinstance(parent, list) and len(parent) == 2 and type(parent[1]) is int):
            raise ValueError(f"parent must be null or [address, call_index], got {parent!r}")
        parent = (str(parent[0]), parent[1])
    if data["stage"] is not None and not isinstance(data["stage"], str):
        raise ValueError(f"stage must be a string or null, got {data['stage']!r}")
    return CallEvent(
        session=str(data["session"]), seq=data["seq"], step=data["step"], phase=data["phase"],
        address=str(data["address"]), class_name=str(data["class_name"]), call_index=data["call_index"],
        parent=parent, role=str(data["role"]), stage=data["stage"], lane=dict(data.get("lane") or {}),
        inputs=_tensor_metas(data.get("inputs", []), "inputs"),
        outputs=_tensor_metas(data.get("outputs", []), "outputs"),
        device=data.get("device"), error=data.get("error"),
    )


def call_from_line(data: dict[str, Any], where: str, header: SessionHeader) -> CallEvent:
    if data.get("kind") != "call":
        raise EventFileError(f"{where}: expected kind 'call', got {data.get('kind')!r}")
    try:
        event = _event_from_dict(data)
    except (ValueError, TypeError) as exc:
        raise EventFileError(f"{where}: {exc}") from None
    if event.session != header.session:
        raise EventFileError(f"{where}: session {event.session!r} != header {header.session!r}")
    return event
