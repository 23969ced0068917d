"""The report: a versioned, deterministic document of a session's loop nest, and its JSON form.

Invariant: a `Report` always expands exactly to its observed call `counts` (`merge.loops.check_exact`); builders
check it before returning, writers before writing, `read_report` after reading.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.jsonable import jsonable
from ..errors import ReportFileError
from ..merge.loops import Loop, Variant, check_exact

REPORT_SCHEMA = "loopmeta.report"
REPORT_VERSION = 3  # 3: the work section (docs/report-format.md#work); `warnings` may be absent (read as none)
READABLE_VERSIONS = (2, 3)


@dataclass
class Report:
    model_class: str
    config: str | None
    source: str  # "events" or "torchlens"
    loops: list[Loop]
    counts: dict[str, int]  # observed calls per node, the ground truth for check_exact
    steps: list[dict[str, Any]] = field(default_factory=list)
    stage_view: list[dict[str, Any]] = field(default_factory=list)  # per group of steps: stage -> loop nest
    moe: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    work: dict[str, Any] | None = None  # FLOPs and bytes per step and stage (work/section.py), from the probe
    notes: list[str] = field(default_factory=list)
    incomplete: str | None = None  # "incomplete: ended after step N (why)" when the session did not end normally
    reads_values: list[str] = field(default_factory=list)  # the tensor values the config's extractors read
    warnings: list[str] = field(default_factory=list)  # what the session got wrong silently (report/positions.py)

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": REPORT_SCHEMA, "version": REPORT_VERSION}
        for f in dataclasses.fields(self):
            data[f.name] = jsonable(getattr(self, f.name))
        data["counts"] = dict(sorted(self.counts.items()))
        return data


def loop_from_dict(data: dict[str, Any]) -> Loop:
    variants = [Variant(v["iterations"], [loop_from_dict(b) for b in v["body"]]) for v in data["variants"]]
    return Loop(**{**data, "variants": variants})


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=1, sort_keys=False) + "\n"


def read_report(path: str | Path) -> Report:
    """Load a report JSON and re-check its exactness (a report that does not expand correctly is refused)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportFileError(f"cannot read report {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA or \
            data.get("version") not in READABLE_VERSIONS:
        raise ReportFileError(f"{path}: not a {REPORT_SCHEMA} document of version "
                              f"{' or '.join(map(str, READABLE_VERSIONS))}")
    fields = {f.name for f in dataclasses.fields(Report)}
    try:
        report = Report(**{k: v for k, v in data.items() if k in fields})
        report.loops = [loop_from_dict(d) for d in data["loops"]]
    except (KeyError, TypeError) as exc:
        raise ReportFileError(f"{path}: malformed report ({exc})") from None
    check_exact(report.loops, report.counts, f"report {path}")
    return report
