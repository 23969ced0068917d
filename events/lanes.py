"""The lane contract: the lane keys that more than one part of loopmeta reads or writes, declared once.

A lane is the dict of metadata an event carries beyond its fixed fields: adapters' extractors fill it, the engine
adds its own keys, loop inference, the report builder and the writers read it. Keys not listed here are free for adapters: they travel into
the report as they are and are printed as `key=value`.
"""

from __future__ import annotations

from typing import Any, Callable

# --- phases of a step -------------------------------------------------------------------------------------------
PREFILL = "prefill"
"""A step that feeds the prompt (or a chunk of it): more than one new token, or no KV cache yet."""
DECODE = "decode"
"""A step that feeds one new token on top of a KV cache."""
PHASES = (PREFILL, DECODE)

# --- keys the engine sets ---------------------------------------------------------------------------------------
STEP = "step"
"""0-based step of the call (each call of the config's step target starts one); set on every node's lane."""
PHASE = "phase"
"""`prefill` or `decode`: returned by the step target's extractor, copied onto every call of the step."""
BEFORE_FIRST_FORWARD = "before_first_forward"
"""True on calls that ran before the session's first step (e.g. image features that `generate()` computes before
the first forward); they are counted in step 0."""
EXTRACT_ERROR = "extract_error"
"""An extractor raised (or returned something unusable); the message names the call. No report is made from it."""

IMAGE_POSITIONS = "image_positions"
"""On the step target's lane of a prefill: the input positions that image features fill (set by the config's step
extractor); every lane total the config lists in `[[image_positions]]` must equal it, else the report warns."""

STEP_KEYS = (STEP, PHASE, BEFORE_FIRST_FORWARD)
"""Keys every call of a step carries alike: shown once per step, not on every loop."""

# --- keys of a MoE call, read by the report builder for the expert ledger ------------------------------------------------
EXPERTS_HIT = "experts_hit"
"""Sorted ids of the experts that received at least one token in this MoE call."""
TOKENS_PER_EXPERT = "tokens_per_expert"
"""Tokens routed to each expert of `experts_hit`, in the same order (a token counts once per expert it reaches)."""
EXPERTS_TOTAL = "experts_total"
"""Experts the MoE block has (the M of `select k of M`)."""
TOP_K = "top_k"
"""Experts the router picks per token (the k of top-k); `experts_hit` counts the distinct experts of all tokens."""
EXPERTS_IMPLEMENTATION = "experts_implementation"
"""How the experts run when they are not modules (`grouped_mm`, `eager`, ...); informational."""


# --- keys of a prefill step, read by the report for what its inputs hold --------------------------------------------
IMAGES = "images"
"""On a step whose forward received images: one dict per image of the batch, in order, with `crops` (local views;
0 without crops), `grid` (`colsxrows`, only where the model receives it) and `tokens` (image positions its
features fill, when known)."""
IMAGES_BATCHED = "images_batched"
"""True on such a step when the crops of all its images ran through the vision calls as one batch and were split
per image afterwards by code that calls no module: the per-image split is then visible only in `IMAGES`."""
REAL_TOKENS = "real_tokens"
"""On a prefill step of more than one sample: per sample, the prompt positions that are not padding (from the
attention mask, a declared value read); `seq_len` - real_tokens[i] positions of sample i are padding."""
INPUT_KEYS = (IMAGES, IMAGES_BATCHED, REAL_TOKENS)
"""Keys the report words out once per step (report/inputs.py), not printed as `key=value`."""


# --- values an extractor hands over unread ---------------------------------------------------------------------------
class Later:
    """A lane value read later: the recorder calls `read()` (no arguments; a plain JSON value back) when the step
    ends, i.e. when the call outside any other returns, before the step is written; earlier only when the table is
    read mid-step, when a step starts inside a call still running, or when a step on another thread ends first. For
    tensor values an extractor must read: a host copy in the middle of a step makes a GPU's host wait for the device
    once per read; at the step's end the device is done anyway. Only a top-level value of the lane may be a `Later`.
    A `read` that raises, or returns what is not plain JSON, marks the lane `EXTRACT_ERROR` (an interruption,
    KeyboardInterrupt, then goes on to the host); a read must not run an instrumented module (a fault).

        >>> later = Later(lambda: [3, 6])
        >>> later.read()
        [3, 6]
    """

    __slots__ = ("read",)

    def __init__(self, read: Callable[[], Any]):
        self.read = read
