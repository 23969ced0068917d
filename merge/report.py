"""The report: a versioned, deterministic document of the loop nest, checked against observed call counts.

`check_exact` is the acceptance test of every report: expanding the loops must give exactly the observed number of
calls of every node. Writers refuse a report that fails it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..patches.events import jsonable
from .loops import Loop, expand

REPORT_SCHEMA = "loopmeta.report"
REPORT_VERSION = 1


class ExactnessError(AssertionError):
    """Expanding a report does not reproduce the observed call counts; the message lists every difference."""


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
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": REPORT_SCHEMA, "version": REPORT_VERSION}
        for f in dataclasses.fields(self):
            data[f.name] = jsonable(getattr(self, f.name))
        data["counts"] = dict(sorted(self.counts.items()))
        return data


def check_exact(loops: list[Loop], observed: dict[str, int], what: str = "report") -> None:
    got = expand(loops)
    diffs = [f"  {node or '<root>'}: observed {observed.get(node, 0)} calls, {what} expands to {got.get(node, 0)}"
             for node in sorted(set(got) | set(observed)) if got.get(node, 0) != observed.get(node, 0)]
    if diffs:
        raise ExactnessError(f"{what} is not exact ({len(diffs)} nodes differ):\n" + "\n".join(diffs[:50]))


def loop_from_dict(data: dict[str, Any]) -> Loop:
    from .loops import Variant

    variants = [Variant(v["iterations"], [loop_from_dict(b) for b in v["body"]]) for v in data["variants"]]
    return Loop(**{**data, "variants": variants})


def write_report(report: Report, out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Check exactness, then write `<stem>.json`, `<stem>.txt` and `<stem>.md`; return their paths."""
    from .render import to_markdown, to_text

    check_exact(report.loops, report.counts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "text": out / f"{stem}.txt", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    paths["text"].write_text(to_text(report) + "\n", encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report) + "\n", encoding="utf-8")
    return paths


def read_report(path: str | Path) -> Report:
    """Load a report JSON and re-check its exactness (a report that does not expand correctly is refused)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != REPORT_SCHEMA or data.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: not a {REPORT_SCHEMA} v{REPORT_VERSION} document")
    fields = {f.name for f in dataclasses.fields(Report)}
    report = Report(**{k: v for k, v in data.items() if k in fields})
    report.loops = [loop_from_dict(d) for d in data["loops"]]
    check_exact(report.loops, report.counts, f"report {path}")
    return report
