"""Live progress on a terminal: what the command line is doing now and, while the session runs, the steps and
calls recorded so far. The counts are read from the recorder when the display refreshes (a few times a second, in
rich's refresh thread), never per call; when the console is not a terminal nothing is shown at all.

    progress = LiveProgress(console)
    with progress:
        progress("running the instrumented session", recorder)  # the recorder's `steps` and `calls` are shown live
        progress("writing the report files")
"""

from __future__ import annotations

import time
from typing import Any


class LiveProgress:
    """A callable `(what, recorder=None)` that sets the current phase; a context manager that shows it (on a
    terminal only, and leaves nothing on screen afterwards)."""

    def __init__(self, console: Any):
        self.console = console
        self.what = "starting"
        self.recorder: Any = None
        self._since = time.monotonic()
        self._live: Any = None
        self._spinner: Any = None

    def __call__(self, what: str, recorder: Any = None) -> None:
        self.what, self.recorder, self._since = what, recorder, time.monotonic()
        if self._live is not None:
            self._live.refresh()  # every phase is shown at least once, however short

    def text(self) -> str:
        line = f"{self.what} ({time.monotonic() - self._since:.0f} s)"
        if self.recorder is not None:
            steps = self.recorder.steps
            line += f": {steps} step{'' if steps == 1 else 's'} so far, {self.recorder.calls:,} calls recorded"
        return line

    def __rich__(self) -> Any:
        self._spinner.update(text=self.text())
        return self._spinner

    def __enter__(self) -> "LiveProgress":
        if self.console.is_terminal:
            from rich.live import Live
            from rich.spinner import Spinner

            self._spinner = Spinner("dots")
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=8)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
