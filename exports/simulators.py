"""Exports of a report's work for analytic simulators, each read back and checked before it is kept:

- `genz`: GenZ model files (`genz/<group>.csv` and `genz/<group>.<stage>.csv`): rows `Name, M, N, D, H, Z, Z, T`
  with GenZ's operator codes (GEMM 3, Logit 4, Attend 5, Repeat 13, End Repeat 14); a run of identical layer blocks
  becomes `Repeat n` ... `End Repeat n`. Group `prefill` is step 0, `decode` the first probed decode step (GenZ
  analyses one decode step at a time; the KV length grows by one per step). `genz/session.csv` holds every step of
  the session in order (written when the report's work covers every step).
- `llm-viewer`: per node (indices as `*`) and op, for prefill and decode: OPs, memory access, intensity, bound on a
  hardware entry, load_weight / load_act / store_act / load_kv_cache / store_kv_cache.
- `csv`: the per-op table as JSON (`ops.json`; its CSV comes with every report) and the per step x stage table
  (`steps.csv`).
Formats and their sources: docs/analytic.md#exports.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..common.addresses import node_pattern
from ..common.files import write_atomically
from ..errors import ReportFileError
from ..work.roofline import peak_for

GEMM, LOGIT, ATTEND, REPEAT, END_REPEAT = 3, 4, 5, 13, 14
GENZ_HEADER = ["Name", "M", "N", "D", "H", "Z", "Z", "T"]


def _shapes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in part.split("@")[0].split("x")) if part.split("@")[0] != "scalar" else ()
            for part in text.split(";") if part]


def _ops(work: dict[str, Any]) -> list[dict[str, Any]]:
    cols = work["ops"]["columns"]
    return [dict(zip(cols, r)) for r in work["ops"]["rows"]]


def probed_groups(work: dict[str, Any], phases: dict[int, str]) -> dict[str, int]:
    """prefill -> step 0, decode -> the first probed decode step (when probed)."""
    out = {}
    for step in work["probed_steps"]:
        out.setdefault(phases.get(step, "?"), step)
    return {g: s for g, s in out.items() if g in ("prefill", "decode")}


def genz_rows(ops: list[dict[str, Any]]) -> list[list[Any]]:
    """GenZ rows for the product ops (their MACs are FLOPs / 2), runs of identical blocks folded into Repeats."""
    return _fold(_product_rows(ops))


def _product_rows(ops: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for op in ops:
        if not op["flops"]:
            continue
        name = f"{node_pattern(op['node'])}:{op['func']}"
        macs = op["flops"] // 2
        if op["class"] == "attention":
            q, k, v = _shapes(op["inputs"])[:3]
            heads = math.prod(q[:-2])
            rows += [[name + ":logit", heads, q[-2], k[-2], q[-1], heads, 0, LOGIT],
                     [name + ":attend", heads, q[-2], k[-2], v[-1], heads, 0, ATTEND]]
            continue
        out = _shapes(op["output"])[0] or (1,)
        m = out[1] if op["class"] == "conv" and len(out) > 1 else out[-1]
        n = math.prod(out) // m
        rows.append([name, m, n, macs // (m * n), 1, 1, 0, GEMM] if macs % (m * n) == 0 else
                    [name, macs, 1, 1, 1, 1, 0, GEMM])
    return rows


def session_rows(work: dict[str, Any], phases: dict[int, str]) -> list[list[Any]] | None:
    """GenZ rows of every step in order, each step folded on its own and runs of identical steps into Repeats; None
    when the work does not cover every step. Steps after the probed ones continue the rows of the last two probed
    decode steps linearly (the derivation lets only dimensions that grow by one per step change, so every field is
    linear in the step); the session's last step has as many rows as the probe's last traced step."""
    flops = {s["step"]: s["flops"] for s in work["steps"]}
    if not phases or set(phases) - set(flops):
        return None
    by_step: dict[int, list[dict[str, Any]]] = {}
    for o in _ops(work):
        by_step.setdefault(o["step"], []).append(o)
    rows_of = {s: _product_rows(ops) for s, ops in by_step.items()}
    decode = [s for s in work["probed_steps"] if phases.get(s) == "decode"]
    blocks: list[list[list[Any]]] = []
    for step in sorted(phases):
        if step in work["probed_steps"]:
            rows = rows_of.get(step, [])
        else:
            rows = _continued(rows_of[decode[-2]], rows_of[decode[-1]], step - decode[-1])
            rows = rows[:len(rows_of[max(rows_of)])] if step == max(phases) else rows
        if 2 * genz_macs(rows) != flops[step]:
            raise ReportFileError(f"GenZ session export, step {step}: {genz_macs(rows)} MACs in the rows, "
                                  f"{flops[step]} FLOPs in the report")
        blocks.append(_fold(rows))
    out: list[list[Any]] = []
    for block, n in _runs(blocks):
        out += [["Repeat", n, 1, 1, 1, 1, 1, REPEAT], *block, ["End Repeat", n, 1, 1, 1, 1, 1, END_REPEAT]] \
            if n > 1 else block
    return out


def _continued(before: list[list[Any]], last: list[list[Any]], offset: int) -> list[list[Any]]:
    if len(before) != len(last) or any((a[0], a[7]) != (b[0], b[7]) for a, b in zip(before, last)):
        raise ReportFileError("GenZ session export: the last two probed decode steps run different products")
    return [[b[0], *(y + offset * (y - x) for x, y in zip(a[1:], b[1:]))] for a, b in zip(before, last)]


def _runs(blocks: list[list[list[Any]]]) -> list[tuple[list[list[Any]], int]]:
    out: list[tuple[list[list[Any]], int]] = []
    for block in blocks:
        if out and out[-1][0] == block:
            out[-1] = (block, out[-1][1] + 1)
        else:
            out.append((block, 1))
    return out


def _fold(rows: list[list[Any]]) -> list[list[Any]]:
    """Run-length fold: a block of rows repeated n >= 2 times in a row becomes Repeat n, block, End Repeat n."""
    out, i = [], 0
    at: dict[tuple, list[int]] = {}
    for j, r in enumerate(rows):
        at.setdefault(tuple(r), []).append(j)
    while i < len(rows):
        best = (1, 1)
        for size in [j - i for j in at[tuple(rows[i])] if i < j <= i + (len(rows) - i) // 2]:
            n = 1
            while rows[i + n * size:i + (n + 1) * size] == rows[i:i + size]:
                n += 1
            if n > 1 and n * size > best[0] * best[1]:
                best = (size, n)
        size, n = best
        if n > 1:
            out += [["Repeat", n, 1, 1, 1, 1, 1, REPEAT], *_fold(rows[i:i + size]), ["End Repeat", n, 1, 1, 1, 1, 1,
                                                                                      END_REPEAT]]
        else:
            out.append(rows[i])
        i += size * n
    return out


def genz_macs(rows: list[list[Any]]) -> int:
    """MACs of GenZ rows with GenZ's rules (GEMM M*N*D, Logit/Attend heads*q*k*head dim, Repeat multiplies)."""
    total, factor = 0, [1]
    for r in rows:
        if r[7] == REPEAT:
            factor.append(factor[-1] * r[1])
        elif r[7] == END_REPEAT:
            factor.pop()
        else:
            total += factor[-1] * (r[1] * r[2] * r[3] * (r[4] if r[7] in (LOGIT, ATTEND) else 1))
    return total


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def genz_files(work: dict[str, Any], phases: dict[int, str]) -> dict[str, str]:
    """File name -> text: per group, the whole step and each stage alone; each checked against the report's FLOPs."""
    files, ops = {}, _ops(work)
    for group, step in probed_groups(work, phases).items():
        mine = [o for o in ops if o["step"] == step]
        for stage in [None, *sorted({o["stage"] for o in mine if o["flops"]})]:
            chosen = [o for o in mine if stage is None or o["stage"] == stage]
            rows = genz_rows(chosen)
            expected = sum(o["flops"] or 0 for o in chosen) // 2
            if genz_macs(rows) != expected:
                raise ReportFileError(f"GenZ export of {group} {stage or 'all stages'}: {genz_macs(rows)} MACs "
                                      f"in the rows, {expected} in the report")
            files[f"genz/{group}{'.' + stage if stage else ''}.csv"] = csv_text(GENZ_HEADER, rows)
    session = session_rows(work, phases)
    if session is not None:
        files["genz/session.csv"] = csv_text(GENZ_HEADER, session)
    return files


LLM_VIEWER = ["group", "layer", "OPs", "memory_access", "arithmetic_intensity", "bound", "load_weight", "load_act",
              "store_act", "load_kv_cache", "store_kv_cache"]


def llm_viewer_rows(work: dict[str, Any], phases: dict[int, str], peak: float, bandwidth: float) -> list[list[Any]]:
    """One row per (group, node pattern and op) of the probed prefill and decode steps, summed over calls."""
    acc: dict[tuple[str, str], list[int]] = {}
    for group, step in probed_groups(work, phases).items():
        for o in _ops(work):
            if o["step"] != step:
                continue
            store = o["output_bytes"]
            row = acc.setdefault((group, f"{node_pattern(o['node'])}:{o['func']}"), [0] * 6)
            for i, v in enumerate((o["flops"] or 0, o["weight_bytes"], o["activation_bytes"] - store, store,
                                   o["kv_read_bytes"], o["kv_written_bytes"])):
                row[i] += v
    rows = []
    for (group, layer), (ops, weight, load, store, kv_r, kv_w) in acc.items():
        memory = weight + load + store + kv_r + kv_w
        intensity = ops / memory if memory else 0.0
        rows.append([group, layer, ops, memory, round(intensity, 3),
                     "compute" if intensity >= peak / bandwidth else "memory", weight, load, store, kv_r, kv_w])
    return rows


def export(work: dict[str, Any], phases: dict[int, str], kinds: list[str], out: Path,
           hardware: Any = None) -> list[Path]:
    """Write the exports `kinds` into `out`; return their paths. `llm-viewer` needs `hardware`."""
    files: dict[str, str] = {}
    for kind in kinds:
        if kind == "genz":
            files.update(genz_files(work, phases))
        elif kind == "llm-viewer":
            if hardware is None:
                raise ReportFileError("--export llm-viewer needs --hardware (the bound column depends on it)")
            rows = llm_viewer_rows(work, phases, peak_for(hardware, work["compute_dtype"]), hardware.bandwidth)
            files["llm_viewer.csv"] = csv_text(LLM_VIEWER, rows)
        elif kind == "csv":  # the per-op CSV is always written with the report (report_ops.csv)
            files["ops.json"] = json.dumps(work["ops"]) + "\n"
            files["steps.csv"] = csv_text(work["step_stage"]["columns"], work["step_stage"]["rows"])
        else:
            raise ReportFileError(f"unknown export {kind!r}: use genz, llm-viewer or csv")
    return [_write_checked(out / name, text) for name, text in files.items()]


def _write_checked(path: Path, text: str) -> Path:
    """Write `text`, then read it back: a file that does not hold what was meant is refused."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
        if path.read_text(encoding="utf-8") != text:
            raise ReportFileError(f"{path} does not read back as written")
    except OSError as exc:
        raise ReportFileError(f"cannot write {path}: {exc}. Pass an output folder you can write (--out).") from None
    return path
