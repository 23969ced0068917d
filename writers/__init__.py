"""Writers: the forms a report is read in (text, Markdown, JSON files). They read a `Report`, nothing else."""

from .files import write_report
from .markdown import to_markdown
from .text import to_text

__all__ = ["to_markdown", "to_text", "write_report"]
