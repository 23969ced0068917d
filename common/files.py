"""Whole-or-nothing file writes: a full disk or a crash leaves the previous file, never a truncated one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; it replaces `path` when the block ends normally, else is removed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, content: str) -> None:
    """`path` holds `content` entirely, or keeps what it held before."""
    with replacing(path) as tmp:
        tmp.write_text(content, encoding="utf-8")
