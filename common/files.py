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


def create_once(path: Path, content: str) -> bool:
    """Create `path` holding `content` entirely, unless it exists: False then, and the file is left alone. Atomic
    against another process doing the same (a hard link of a finished temporary file: one of them creates it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True
