"""Lane totals that must equal the image positions of each prefill (a config's `[[image_positions]]`).

A prefill step whose step lane holds `image_positions` is checked against every declared total: the sum of one lane
key over the calls of one role in that step. A total that differs gives a warning; a step without the positions, or
without any call carrying the key (no image ran), is not checked. Only lanes are read, never tensors.
"""

from __future__ import annotations

from typing import Any

from ..events import lanes
from ..events.table import EventTable


def _lanes_of(table: EventTable, role: str | None) -> list[tuple[int, dict[str, Any]]]:
    """(step, lane) of every call of `role`, in start order."""
    c = table.columns
    nodes = {i for i, n in enumerate(table.nodes) if n.role == role}
    return [(c["step"][r], table.lanes[c["lane"][r]]) for r in table.rows_where("node", nodes)]


def position_warnings(table: EventTable, config: Any, step_role: str | None) -> list[str]:
    """One line per prefill step and declared total that differ: `image positions P < <what> T: <hint>`."""
    positions = {step: lane[lanes.IMAGE_POSITIONS] for step, lane in _lanes_of(table, step_role)
                 if lane.get(lanes.PHASE) == lanes.PREFILL and lane.get(lanes.IMAGE_POSITIONS) is not None}
    warnings = []
    for total in (config.image_positions if config and positions else ()):
        sums: dict[int, int] = {}
        for step, lane in _lanes_of(table, total.role):
            if step in positions and lane.get(total.key) is not None:
                sums[step] = sums.get(step, 0) + lane[total.key]
        for step, value in sorted(sums.items()):
            held = positions[step]
            if held != value:
                where = f"step {step}: " if step else ""
                sign = "<" if held < value else ">"
                warnings.append(f"{where}image positions {held} {sign} {total.what} {value}"
                                + (f": {total.hint}" if total.hint else ""))
    return warnings
