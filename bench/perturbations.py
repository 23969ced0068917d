"""Does the model's output move when nothing but the host's timing or the device's memory reuse changes? A benchmark's
companion, not a test.

The built-in random-weight DeepSeek-OCR 2 generates `--tokens` tokens greedily on a 640x480 page, first plain, then
once beside each perturbation below, each compared with the first plain run (generated tokens, then the per-step
logits bit for bit):

- plain again; loopmeta (events in memory), also with the expert ledger read at each router call instead of at the
  step's end;
- no loopmeta, a forward hook on each MoE router that does nothing, sleeps 0.2 ms or 2 ms on the host, keeps the
  router's top-k ids until the run ends, or reads them (`tolist`, a wait for the device).

On the CPU every line must say identical. On a GPU a line that differs beside a hook that only sleeps says that the
model's own numerics there depend on host timing (docs/benchmarks.md#outputs-on-a-gpu).

    python bench/perturbations.py                                             # tiny, CPU
    python bench/perturbations.py --size full --device cuda --dtype bfloat16  # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any, Callable, Iterator

import torch


def compare(ref: Any, out: Any) -> str:
    """Where `out` first departs from `ref`: generated tokens, then per-step logits (bit for bit)."""
    diff = (ref.sequences != out.sequences).nonzero() if ref.sequences.shape == out.sequences.shape else None
    tokens = ("identical tokens" if diff is not None and not len(diff)
              else "other shapes" if diff is None else f"first token differs at position {diff[0].tolist()[1]}")
    for step, (a, b) in enumerate(zip(ref.logits, out.logits)):
        if not torch.equal(a, b):
            return f"{tokens}; logits first differ at step {step} by {(a.float() - b.float()).abs().max().item():.3g}"
    return f"{tokens}; logits identical over {len(ref.logits)} steps"


def variants(model: Any) -> dict[str, Callable[[], Any]]:
    """Context factories, one per perturbation."""
    from loopmeta.model_configs import deepseek_ocr2_hf
    from loopmeta.patches import instrument

    routers = [m for name, m in model.named_modules() if name.endswith("mlp.gate")]  # every hook returns None
    kept: list[Any] = []

    @contextlib.contextmanager
    def hooks(fn: Callable[..., Any]) -> Iterator[None]:
        handles = [r.register_forward_hook(fn) for r in routers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            kept.clear()

    def read(module: Any, args: Any, out: Any) -> None:
        out[2].tolist()

    @contextlib.contextmanager
    def ledger_at_once() -> Iterator[None]:
        old, deepseek_ocr2_hf.at_step_end = deepseek_ocr2_hf.at_step_end, lambda ids: False
        try:
            with instrument(model):
                yield
        finally:
            deepseek_ocr2_hf.at_step_end = old

    return {
        "plain again": contextlib.nullcontext,
        "loopmeta, events in memory": lambda: instrument(model),
        "loopmeta, ledger read at each router call": ledger_at_once,
        "hook on each router: nothing": lambda: hooks(lambda *_: None),
        "hook on each router: sleep 0.2 ms": lambda: hooks(lambda *_: time.sleep(0.0002)),
        "hook on each router: sleep 2 ms": lambda: hooks(lambda *_: time.sleep(0.002)),
        "hook on each router: keep its ids": lambda: hooks(lambda mod, args, out: kept.append(out[2])),
        "hook on each router: read its ids": lambda: hooks(read),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "quarter", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.sessions.pages import synthetic_page

    dtype = getattr(torch, args.dtype)
    model = build_model(args.size, dtype=dtype, device=args.device)
    inputs = prepare_inputs(build_processor(), synthetic_page(640, 480), dtype=dtype).to(args.device)

    def generate() -> Any:
        out = model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    print(f"{args.size}, {args.device}, {args.dtype}, {args.tokens} tokens; each run against the first plain run")
    with torch.inference_mode():
        ref = generate()
        for name, context in variants(model).items():
            with context():
                out = generate()
            print(f"  {name:45s} {compare(ref, out)}", flush=True)


if __name__ == "__main__":
    main()
