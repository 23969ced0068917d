"""Whether a session's events are the whole session, and what a report of an incomplete one may hold.

A session is complete when its end record says it returned and recorded every call. A stream without an end record
was cut (the run was killed or the file truncated); a session that raised or was interrupted ended early. Such
events give a report only when the caller allows it, and then only of the steps that finished: the report says
"incomplete: ended after step N" in every form. Calls that could not be recorded (faults) never give a report.
"""

from __future__ import annotations

from ..errors import MergeError
from ..events.schema import SessionEnd
from ..events.table import EventTable


def _why(table: EventTable, end: SessionEnd | None) -> str | None:
    """Why the events are not the whole session, or None when they are."""
    if end is None:
        started = max(table.columns["seq"], default=-1) + 1
        lost = f"; {started - len(table)} calls started but never finished" if started > len(table) else ""
        return f"the run was interrupted: the stream has no end record (killed, or the file was truncated){lost}"
    if end.ended != "returned":
        return f"the session {end.ended}" + (f" ({end.error})" if end.error else "")
    return None


def complete_part(table: EventTable, end: SessionEnd | None, step_role: str | None,
                  allow_incomplete: bool) -> tuple[EventTable, str | None]:
    """The events a report may use and, for an incomplete session, the report's `incomplete` line."""
    if end is not None and end.faults:
        more = f"\n  ... {len(end.faults)} in all" if len(end.faults) > 10 else ""
        raise MergeError("some calls could not be recorded, no report is made:\n  " + "\n  ".join(end.faults[:10])
                         + more)
    why = _why(table, end)
    if why is None:
        return table, None
    if not allow_incomplete:
        raise MergeError(f"{why}. Pass allow_incomplete=True (run_traced.py --allow-incomplete) for a report of the "
                         "steps that finished, marked incomplete")
    if step_role is None:
        raise MergeError(f"{why}, and the config has no step target to tell finished steps apart: no report is made")
    step_nodes = {i for i, n in enumerate(table.nodes) if n.role == step_role}
    finished = {table.columns["step"][r] for r in table.rows_where("node", step_nodes) if r not in table.errors}
    steps = 0
    while steps in finished:
        steps += 1
    if steps == 0:
        raise MergeError(f"{why} before its first step finished: no report is made")
    kept = table.subset(r for r, step in enumerate(table.columns["step"]) if step < steps)
    return kept, f"incomplete: ended after step {steps - 1} ({why})"
