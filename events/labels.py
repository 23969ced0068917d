"""Profiler labels of recorded calls: the names patches/profiling.py gives the `record_function` ranges around each
call (`profile=True`), and what traces/profile.py reads back from a profiler trace.

    loopmeta/<stage or ->/<role>[step=S,layer=N,key=value,...]

Invariants: a label starts with `PREFIX`; the bracket starts with `step=S`, the call's 0-based step; `layer=N`, the
first index in the call's address (`model.layers.2.mlp.experts.5` -> 2), follows when the address has one; then
the call's scalar lane values (str, int, float, bool) as its `on_enter` extractor left them, in lane order, with
`,`, `=`, `[`, `]` and `/` in them written as `_`. Stages and roles hold no `/` or `[`. `parse` reads stage, role
and step back; the rest is for people reading the trace.

    >>> name = label("llm", "llm.layer", 3, "model.layers.2", {"seq_len": 1, "attention": "window 14",
    ...                                                         "router": {"top_k": 2}})
    >>> name
    'loopmeta/llm/llm.layer[step=3,layer=2,seq_len=1,attention=window 14]'
    >>> parse(name)
    ('llm', 'llm.layer', 3)
    >>> parse(label(None, "step", 0, "", {"phase": "prefill"})), parse("aten::mm")
    (('-', 'step', 0), None)
"""

from __future__ import annotations

import re
from typing import Any

from . import lanes

PREFIX = "loopmeta/"
NO_STAGE = "-"
"""The stage part of the label of a call whose module has no stage."""
_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")
_LABEL = re.compile(r"loopmeta/([^/\[]*)/([^/\[]*)\[step=(\d+)[,\]]")
_UNSAFE = str.maketrans({c: "_" for c in ",=[]/"})
_SKIPPED = {lanes.BEFORE_FIRST_FORWARD, lanes.EXTRACT_ERROR}


def layer_of(address: str) -> int | None:
    """The first index in a module address (the layer of a stack member and of everything inside it), or None."""
    found = _INDEX.search(address)
    return None if found is None else int(found.group(1))


def label(stage: str | None, role: str, step: int, address: str, lane: dict[str, Any]) -> str:
    """The profiler label of one call."""
    parts = [f"step={step}"]
    layer = layer_of(address)
    if layer is not None:
        parts.append(f"layer={layer}")
    parts += [f"{k}={str(v).translate(_UNSAFE)}" for k, v in lane.items()
              if type(v) in (str, int, float, bool) and k not in _SKIPPED]
    return f"{PREFIX}{stage or NO_STAGE}/{role}[{','.join(parts)}]"


def parse(name: str) -> tuple[str, str, int] | None:
    """(stage, role, step) of a loopmeta label (stage `-` for none), or None for any other name."""
    found = _LABEL.match(name)
    return None if found is None else (found.group(1), found.group(2), int(found.group(3)))
