"""One page through the single-session path: `trace_session` (events only, or with the TorchLens probe on the
first page), its events file read back with `read_events`, and the page's rows for the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..events.stream import read_events
from ..pipeline import trace_session
from .rows import call_rows, expert_rows, loop_rows, session_row


def page_tables(args: Any, config: Any, session: Any, image: Path, events: Path,
                probe: bool) -> tuple[dict[str, dict[str, list[Any]]], dict[str, Any]]:
    """The page's `calls`, `loops` and `experts` columns and its `sessions` row (bounds, page size)."""
    from PIL import Image

    run = session.page(image)
    with session.context():
        report, _ = trace_session(session.model, run, config=config, events=events, probe="auto" if probe else None,
                                  check_versions=not args.ignore_version_pins, options=dict(args.option))
    table = read_events(events).table
    bounds = config.function(config.session.bounds)(table) if config.session.bounds else {}
    with Image.open(image) as opened:
        width, height = opened.size
    tables = {"calls": call_rows(table), "loops": loop_rows(report.loops), "experts": expert_rows(report)}
    return tables, {"width": width, "height": height, **session_row(report, bounds)}
