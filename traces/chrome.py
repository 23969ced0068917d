"""A session's recorded calls as a Chrome / Perfetto trace (`trace.json`, the Trace Event Format's JSON object form):
open it in ui.perfetto.dev or chrome://tracing.

Invariants: one complete event (`"ph": "X"`) per recorded call, `ts` and `dur` in microseconds from the session's
clock origin (`otherData.time_origin_unix_ns` places it in wall-clock time), `tid` the operating-system id of the
thread that ran the call, `pid` 1; on one thread slices nest as the calls did (events/table.py `CLOCK`); events are
sorted by start, a parent before its children. `name` is the module address (the root's class for the root),
`cat` the stage (`-` for none); `args` hold the loop coordinates: `step`, `phase`, `stage`, `role`, `layer` (first
index of the address), `call` (`address:k`), `parent` (the parent call's `address:k`), and the call's lane fields
(view, batch, resolution, experts hit, ...). Only a version-5 stream has call times; the report never reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..common.files import write_atomically
from ..errors import EventFileError, ReportFileError
from ..events.labels import NO_STAGE, layer_of
from ..events.lanes import PHASES
from ..events.schema import SessionHeader
from ..events.stream import read_events
from ..events.table import NO_PARENT, EventTable

PID = 1
MAIN_TID = 1
"""The tid of every call when the table does not say which thread ran it."""


def _args(table: EventTable, row: int) -> dict[str, Any]:
    c = table.columns
    node = table.nodes[c["node"][row]]
    out: dict[str, Any] = dict(table.lanes[c["lane"][row]])
    out.update(step=c["step"][row], phase=PHASES[c["phase"][row]], stage=node.stage, role=node.role,
               call=f"{node.address}:{c['call_index'][row]}")
    layer = layer_of(node.address)
    if layer is not None:
        out["layer"] = layer
    parent = c["parent"][row]
    if parent != NO_PARENT:
        try:
            p = table.row_of_seq(parent)
            out["parent"] = f"{table.nodes[c['node'][p]].address}:{c['call_index'][p]}"
        except KeyError:  # a cut stream: the parent was still running
            out["parent"] = None
    if row in table.errors:
        out["error"] = table.errors[row]
    return out


def chrome_trace(header: SessionHeader, table: EventTable) -> dict[str, Any]:
    """The Trace Event Format object of a timed table (raises `EventFileError` for a stream without call times)."""
    if not table.timed:
        raise EventFileError(f"session {header.session}: the events have no call times (events file version "
                             f"{header.version}; version 5 has them): no trace")
    c = table.columns
    tids = [t.native_id for t in table.threads]
    tid = (lambda row: tids[c["thread"][row]]) if tids else (lambda row: MAIN_TID)
    order = sorted(range(len(table)), key=lambda r: (c["start"][r], -c["end"][r], c["seq"][r]))
    slices = []
    for r in order:
        node = table.nodes[c["node"][r]]
        slices.append({"name": node.address or node.class_name, "cat": node.stage or NO_STAGE, "ph": "X",
                       "ts": c["start"][r] / 1000, "dur": (c["end"][r] - c["start"][r]) / 1000, "pid": PID,
                       "tid": tid(r), "args": _args(table, r)})
    names = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
              "args": {"name": f"loopmeta {header.config} {header.model_class} session {header.session}"}}]
    names += [{"name": "thread_name", "ph": "M", "pid": PID, "tid": t.native_id, "args": {"name": t.name}}
              for t in table.threads]
    return {"traceEvents": names + slices, "displayTimeUnit": "ms",
            "otherData": {"loopmeta_session": header.session, "config": header.config,
                          "model_class": header.model_class, "time_origin_unix_ns": header.time_origin_ns}}


def write_trace(events: str | Path, path: str | Path) -> Path | None:
    """Write the trace of an events file to `path` (whole or not at all); None, writing nothing, when the stream has
    no call times (versions 3 and 4). A cut stream gives the trace of the calls it holds."""
    header, table, _ = read_events(events)
    if not table.timed:
        return None
    path = Path(path)
    try:
        write_atomically(path, json.dumps(chrome_trace(header, table), separators=(",", ":")))
    except OSError as exc:
        raise ReportFileError(f"cannot write the trace to {path}: {exc}. Pass an output folder you can write "
                              "(--out).") from None
    return path
