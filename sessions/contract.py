"""The contract between the command line and a session driver (a config's `[session] load`, or a built-in model).

The command line turns its options into a `SessionRequest`; the adapter's loader turns that into a `Session`: the
loaded model and a function that runs one inference session on it. Neither side knows the other's internals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager


@dataclass(frozen=True)
class SessionRequest:
    """What the user asked for. `model` None means the built-in model of size `builtin`."""

    model: str | None = None
    builtin: str = "tiny"
    revision: str | None = None
    trust_remote_code: bool = False
    images: tuple[Path | tuple[int, int], ...] = ()  # image files or synthetic page sizes (w, h); () = the default
    prompt: str | None = None  # None: the config's `[session] prompt`
    mode: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # named settings over the mode's (e.g. --image-size)
    max_new_tokens: int = 4
    device: str = "cpu"
    dtype: str | None = None  # None: the config's `[session] dtype`, else float32
    attn_implementation: str | None = None
    experts_implementation: str | None = None
    out: Path = Path("loopmeta-out")

    @property
    def image(self) -> Path | tuple[int, int] | None:
        """The first image asked for (None: none, the driver's default page)."""
        return self.images[0] if self.images else None


@dataclass
class Session:
    """A loaded model and how to run it: `run()` is the session; `context()` is entered around it (and around the
    TorchLens probe) for what the run needs, e.g. a vendor call made harmless on a CPU. `page(image)` gives the
    `run()` of the same model on another page image file, so that a corpus loads the model once (None: the driver
    runs one page only)."""

    model: Any
    run: Callable[[], Any]
    label: str
    context: Callable[[], ContextManager[Any]] = field(default=contextlib.nullcontext)
    page: Callable[[Path], Callable[[], Any]] | None = None


def prompt_of(request: SessionRequest, config: Any) -> str:
    """The user's prompt, else the config's `[session] prompt`, else an empty one."""
    return request.prompt if request.prompt is not None else (config.session.prompt or "")


def dtype_of(request: SessionRequest, config: Any) -> Any:
    """The torch dtype to load the model in: the user's, else the config's `[session] dtype`, else float32."""
    import torch

    return getattr(torch, request.dtype or config.session.dtype or "float32")
