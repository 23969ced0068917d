"""Reports: build the document of a session's loop nest from the merge's results, its schema and JSON form."""

from .build import session_report, structural_report
from .schema import Report, read_report

__all__ = ["Report", "read_report", "session_report", "structural_report"]
