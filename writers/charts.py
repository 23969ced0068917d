"""The report's charts as inline SVG, drawn with matplotlib: the steps' numeric lane values per step (sequence and KV
lengths for a language model), and the MoE ledger as a heat map of tokens per (MoE node, expert) over the session.

Deterministic: the same report gives the same SVG text (fixed hash salt, no date). matplotlib is imported inside
the functions; the Agg backend draws without a display.
"""

from __future__ import annotations

import io
import re
from typing import Any

from ..events.lanes import STEP_KEYS

_DIGITS = re.compile(r"(\d+)")


def _figure_svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "loopmeta"
    import matplotlib.pyplot as plt

    return plt


def step_series(steps: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Every lane key that is an integer on every step, as a series over the steps (step keys left out)."""
    keys = [k for k in steps[0] if k not in STEP_KEYS] if steps else []
    return {k: [s[k] for s in steps] for k in keys
            if all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) for s in steps)}


def steps_chart(steps: list[dict[str, Any]]) -> str | None:
    """A line per integer lane key of the steps (e.g. seq_len, kv_len) against the step; None without one."""
    series = step_series(steps)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.6))
    x = [s["step"] for s in steps]
    for key, values in series.items():
        ax.step(x, values, where="post", label=key)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (0 = first step)")
    ax.set_yscale("symlog")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _figure_svg(fig)


def expert_load(moe: dict[str, Any]) -> tuple[list[str], int, list[list[int]]]:
    """(MoE nodes in natural order, experts per node, tokens[node][expert] summed over every call)."""
    nodes = sorted({r["address"] for r in moe["rows"]},
                   key=lambda a: [int(p) if p.isdigit() else p for p in _DIGITS.split(a)])
    width = max([r.get("experts_total") or 0 for r in moe["rows"]]
                + [e + 1 for r in moe["rows"] for e in r["experts"]])
    grid = [[0] * width for _ in nodes]
    at = {a: i for i, a in enumerate(nodes)}
    for r in moe["rows"]:
        for expert, tokens in zip(r["experts"], r["tokens"]):
            grid[at[r["address"]]][expert] += tokens
    return nodes, width, grid


def experts_chart(moe: dict[str, Any] | None) -> str | None:
    """A heat map, MoE nodes x experts, of the tokens each expert received over the session; None without MoE."""
    if not moe or not moe["rows"]:
        return None
    nodes, width, grid = expert_load(moe)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(2 + width * 0.18, 14), 1 + len(nodes) * 0.35))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(nodes)), nodes, fontsize=7)
    ax.set_xlabel("expert")
    fig.colorbar(image, ax=ax, label="tokens routed")
    return _figure_svg(fig)


def bar_chart(title: str, bars: list[tuple[str, int]]) -> str:
    """Bars of counts with their labels (e.g. a histogram: value -> pages), titled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(2 + len(bars) * 0.35, 12), 2.4))
    ax.bar(range(len(bars)), [n for _, n in bars])
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7, rotation=90 if len(bars) > 12 else 0)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _figure_svg(fig)
