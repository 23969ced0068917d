"""Roofline lower bounds from a report's work section and a hardware entry.

Per step and stage the bound is max(FLOPs / peak FLOP/s, bytes / bandwidth); a stage x group bound is the sum over
its steps, so decode steps with a growing KV cache each count with their own bytes. These are lower bounds for the
program as written (its ops unfused) on an ideal device, never predictions of measured time (docs/analytic.md).

    >>> hw = Hardware("toy", "test", 1e12, {"float32": 2e12})
    >>> work = {"compute_dtype": "float32", "step_stage": {"columns": ["step", "stage", "flops", "weight_bytes",
    ...         "activation_bytes", "kv_read_bytes", "kv_written_bytes"], "rows": [[0, "llm", 4e12, 1e12, 0, 0, 0]]}}
    >>> roofline(work, {0: "prefill"}, hw)["stages"][0]["bound_s"]
    2.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import HardwareError


@dataclass(frozen=True)
class Hardware:
    name: str
    source: str
    bandwidth: float  # bytes / s
    peak_flops: dict[str, float]  # dtype -> dense FLOP/s


def builtin_hardware() -> dict[str, Hardware]:
    text = resources.files("loopmeta.work").joinpath("hardware.toml").read_text(encoding="utf-8")
    return _entries(tomllib.loads(text), "the built-in hardware table")


def _entries(data: dict[str, Any], where: str) -> dict[str, Hardware]:
    out = {}
    for key, entry in data.items():
        try:
            peaks = {str(k): float(v) for k, v in entry["peak_flops"].items()}
            hw = Hardware(str(entry.get("name", key)), str(entry["source"]), float(entry["bandwidth"]), peaks)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HardwareError(f"{where}: entry [{key}] needs name, source, bandwidth (bytes/s) and peak_flops "
                                f"(dtype = FLOP/s): {type(exc).__name__} {exc}") from None
        if hw.bandwidth <= 0 or not peaks or min(peaks.values()) <= 0:
            raise HardwareError(f"{where}: entry [{key}] has a bandwidth or peak that is not positive")
        out[key] = hw
    return out


def load_hardware(choice: str) -> Hardware:
    """A built-in entry by key (`h100`), or the single entry of a TOML file (`my_gpu.toml`)."""
    if choice.endswith(".toml"):
        try:
            data = tomllib.loads(Path(choice).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise HardwareError(f"cannot read hardware file {choice}: {exc}") from None
        entries = _entries(data, choice)
        if len(entries) != 1:
            raise HardwareError(f"{choice} holds {len(entries)} hardware tables; give it exactly one")
        return next(iter(entries.values()))
    known = builtin_hardware()
    if choice not in known:
        raise HardwareError(f"unknown hardware {choice!r}: use one of {', '.join(known)} or a .toml file")
    return known[choice]


def peak_for(hw: Hardware, dtype: str | None) -> float:
    """`hw`'s peak FLOP/s for products in `dtype`; an entry without that dtype is refused, never substituted."""
    if dtype not in hw.peak_flops:
        raise HardwareError(f"{hw.name} lists no peak for {dtype} products (it has {', '.join(hw.peak_flops)}): "
                            "add it to the hardware TOML")
    return hw.peak_flops[dtype]


def roofline(work: dict[str, Any], phases: dict[int, str], hw: Hardware) -> dict[str, Any]:
    """Bounds per stage x group and for the session, on `hw`, for the work section `work`."""
    dtype = work.get("compute_dtype")
    peak = peak_for(hw, dtype)
    cols = work["step_stage"]["columns"]
    flops, moved = cols.index("flops"), [cols.index(c) for c in cols if c.endswith("_bytes")]
    groups: dict[tuple[str, str], list[float]] = {}
    for r in work["step_stage"]["rows"]:
        compute, memory = r[flops] / peak, sum(r[i] for i in moved) / hw.bandwidth
        acc = groups.setdefault((phases.get(r[0], "?"), r[1]), [0.0, 0.0, 0.0])
        acc[0] += compute
        acc[1] += memory
        acc[2] += max(compute, memory)
    rows = [{"group": g, "stage": s, "compute_s": c, "memory_s": m, "bound_s": b,
             "bound": "compute" if c >= m else "memory"} for (g, s), (c, m, b) in groups.items()]
    return {"hardware": hw.name, "source": hw.source, "dtype": dtype, "peak_flops": peak, "bandwidth": hw.bandwidth,
            "stages": rows, "total_bound_s": sum(r["bound_s"] for r in rows),
            "label": "lower bounds for the ops as written on an ideal device, not predicted times"}
