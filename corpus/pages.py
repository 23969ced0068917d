"""The pages of a corpus: image files and PDF pages from folders, globs and PDF files, each with a stable id.

A page id is the page's path relative to its source (the folder, the folder a glob starts in, or a PDF's folder),
with `#n` (1-based) for a PDF page: `scans/a.png`, `report.pdf#3`. Ids name pages in the store and in
`corpus.json`, so they hold no path of the machine; the listing is sorted by id, the same on every rank.

A source that gives no page (an empty folder, a glob matching nothing, a file that is not a PDF) becomes one page
with its `error` set: it is reported like a page that failed, and the rest of the corpus runs.

    >>> pages = list_pages([])
    Traceback (most recent call last):
    ...
    loopmeta.errors.SessionError: no --pages given: pass a folder, a glob or a PDF file with --pages
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import SessionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
PDF_DPI = 150  # resolution PDF pages are rendered at: an A4 page becomes 1240x1754 pixels


@dataclass(frozen=True)
class Page:
    """One page: its id, its file, the 0-based page of a PDF (None for an image), or the error that stands for a
    source without pages."""

    id: str
    path: Path
    pdf_index: int | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        """The page's file name stem in the store: a digest of its id (ids may hold `/` and `#`)."""
        return hashlib.sha1(self.id.encode("utf-8")).hexdigest()[:16]


def list_pages(sources: list[str]) -> list[Page]:
    """Every page of `sources` (folders, globs, PDF or image files), sorted by id; refuses duplicate ids."""
    if not sources:
        raise SessionError("no --pages given: pass a folder, a glob or a PDF file with --pages")
    pages: dict[str, Page] = {}
    for source in sources:
        for page in _pages_of(source):
            if page.id in pages:
                raise SessionError(f"page {page.id} is given twice (by --pages {source}): give each page once")
            pages[page.id] = page
    return [pages[i] for i in sorted(pages)]


def _pages_of(source: str) -> list[Page]:
    path = Path(source)
    if glob.has_magic(source):
        files = sorted(Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file())
        return _files(files, Path(*_static_prefix(path.parts))) or [
            Page(path.name, path, error=f"--pages {path.name}: no file matches")]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        return _files(files, path) or [Page(path.name or source, path,
                                                    error=f"--pages {path.name}: empty folder, no page in it")]
    if path.is_file():
        return _files([path], path.parent) or [Page(path.name, path, error=f"{path.name}: not an image or "
                                                            f"a PDF ({', '.join(IMAGE_SUFFIXES)}, .pdf)")]
    raise SessionError(f"--pages {source}: no such folder or file: pass a folder, a glob or a PDF file")


def _static_prefix(parts: tuple[str, ...]) -> list[str]:
    """The leading path components of a glob without wildcards (the folder the pattern starts in)."""
    out = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        out.append(part)
    return out or ["."]


def _files(files: list[Path], base: Path) -> list[Page]:
    pages: list[Page] = []
    for f in files:
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else f.name
        if f.suffix.lower() == ".pdf":
            pages += _pdf_pages(f, rel)
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            pages.append(Page(rel, f))
    return pages


def _pdf_pages(path: Path, rel: str) -> list[Page]:
    """One page per PDF page, or one error page when the file is not a PDF pdfium can open."""
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as exc:
        return [Page(rel, path, error=f"{rel}: not a readable PDF ({exc})")]
    try:
        count = len(document)
    finally:
        document.close()
    if not count:
        return [Page(rel, path, error=f"{rel}: a PDF without pages")]
    return [Page(f"{rel}#{i + 1}", path, pdf_index=i) for i in range(count)]


@contextlib.contextmanager
def image_file(page: Page) -> Iterator[Path]:
    """The page as an image file: the file itself, or a PDF page rendered to a temporary PNG (removed after)."""
    if page.pdf_index is None:
        yield page.path
        return
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(page.path)
        try:
            image = document[page.pdf_index].render(scale=PDF_DPI / 72).to_pil().convert("RGB")
        finally:
            document.close()
    except (pypdfium2.PdfiumError, IndexError, OSError) as exc:
        raise SessionError(f"{page.id}: cannot render this PDF page ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="loopmeta-page-") as folder:
        target = Path(folder) / "page.png"
        image.save(target)
        yield target
