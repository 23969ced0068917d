"""Write a report in every form: `<stem>.json`, `<stem>.txt`, `<stem>.md` (and, when asked and graphviz's `dot` is
installed, the drawing `<stem>.svg`; when asked, the page `<stem>.html`), after checking it is exact.

Each file is written whole or not at all: to a temporary file beside it, then renamed over the old one, so a full
disk leaves the previous report in place, never a truncated one."""

from __future__ import annotations

from pathlib import Path

from ..common.files import write_atomically
from ..errors import ReportFileError
from ..exports.simulators import csv_text
from ..merge.loops import check_exact
from ..report.schema import Report, to_json
from .html import to_html
from .markdown import to_markdown
from .svg import svg_missing_reason, to_svg
from .text import to_text


def write_report(report: Report, out_dir: str | Path, stem: str = "report", svg: bool = False,
                 html: bool = False) -> dict[str, Path]:
    """Check exactness, then write the JSON, text and Markdown forms (and the per-op work table as CSV when the
    report has one; with `svg`, the drawing when `svg_missing_reason()` is None; with `html`, the page with the
    drawing when it can be made); return the paths written, by form. A drawing asked for but not made is left out of
    the paths, never faked: the caller tells why, and the page says so in its place."""
    check_exact(report.loops, report.counts)
    out = Path(out_dir)
    forms = {"json": (".json", to_json(report)), "text": (".txt", to_text(report) + "\n"),
             "markdown": (".md", to_markdown(report) + "\n")}
    if report.work and report.work.get("ops"):
        forms["ops"] = ("_ops.csv", csv_text(report.work["ops"]["columns"], report.work["ops"]["rows"]))
    drawing = to_svg(report) if (svg or html) and svg_missing_reason() is None else None
    if svg and drawing is not None:
        forms["svg"] = (".svg", drawing)
    if html:
        forms["html"] = (".html", to_html(report, drawing, svg_missing_reason() or "drawing turned off"))
    paths = {form: out / f"{stem}{suffix}" for form, (suffix, _) in forms.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for form, (_, content) in forms.items():
            write_atomically(paths[form], content)
    except OSError as exc:
        raise ReportFileError(f"cannot write the report to {out}: {exc}. Pass an output folder you can write "
                              "(--out).") from None
    return paths
