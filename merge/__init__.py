"""Merging: TorchLens capture, alignment with events, loop inference, reports and their writers."""

from .merger import MergeError, session_report, structural_report
from .report import ExactnessError, Report, check_exact, read_report, write_report
from .session import Probe, trace_session

__all__ = ["ExactnessError", "MergeError", "Probe", "Report", "check_exact", "read_report", "session_report",
           "structural_report", "trace_session", "write_report"]
