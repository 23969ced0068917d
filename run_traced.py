"""loopmeta's main job: trace one inference session end to end and write its loop report.

With no arguments it runs offline on a built-in tiny random-weight DeepSeek-OCR 2 (real transformers code, real
image processor, a small offline tokenizer, a synthetic page) and `generate`s a few tokens. Output folder: the
events (JSONL), the report (JSON, text, Markdown); the compact loop nest is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

V1_MODES = {  # DeepSeek-OCR v1 infer() settings per mode (shared/reference/deepseek-ocr-v1.md)
    "tiny": dict(base_size=512, image_size=512, crop_mode=False),
    "small": dict(base_size=640, image_size=640, crop_mode=False),
    "base": dict(base_size=1024, image_size=1024, crop_mode=False),
    "large": dict(base_size=1280, image_size=1280, crop_mode=False),
    "gundam": dict(base_size=1024, image_size=640, crop_mode=True),
}


class UserError(Exception):
    """Something the user can fix; printed without a traceback."""


@dataclass
class Session:
    model: Any
    run: Callable[[], Any]
    label: str
    config: str = "auto"
    cuda_noop: bool = False


@contextlib.contextmanager
def tensor_cuda_noop(active: bool) -> Iterator[None]:
    """Make `Tensor.cuda()` return the tensor itself while active (v1 remote code on a CPU), then restore it."""
    import torch

    original = torch.Tensor.cuda
    if active:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loopmeta", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="hub id or local path (default: built-in tiny DeepSeek-OCR 2, offline)")
    p.add_argument("--builtin", choices=["tiny", "quarter"], default="tiny",
                   help="size of the built-in random-weight model: tiny, or quarter width at the real depths")
    p.add_argument("--revision", help="model revision (branch, tag or commit)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (DeepSeek-OCR v1)")
    p.add_argument("--image", type=Path, help="image file (default: a synthetic 1600x1200 document page)")
    p.add_argument("--prompt", default="<image>\nFree OCR.", help="prompt with one <image> tag")
    p.add_argument("--mode", choices=sorted(V1_MODES), default="gundam", help="DeepSeek-OCR v1 resolution mode")
    p.add_argument("--max-new-tokens", type=int, default=4,
                   help="tokens to generate (default 4; v1's own infer() keeps its own limit)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2 (model default when omitted)")
    p.add_argument("--experts-implementation", help="DeepSeek-OCR 2 MoE experts: grouped_mm or eager")
    p.add_argument("--config", default="auto", help="force a model config: built-in name or .toml path")
    p.add_argument("--ignore-version-pins", action="store_true",
                   help="instrument even when the installed transformers is outside the config's pins")
    p.add_argument("--no-torchlens", action="store_true", help="events only: skip the TorchLens probe")
    p.add_argument("--no-expert-ledger", action="store_true",
                   help="DeepSeek-OCR 2: do not read the router's top-k ids (no MoE selection in the report)")
    p.add_argument("--from-events", type=Path, metavar="EVENTS_JSONL",
                   help="no model run: rebuild the report from a saved event stream (its config, or --config)")
    p.add_argument("--out", type=Path, default=Path("loopmeta-out"), help="output folder (default loopmeta-out)")
    return p.parse_args(argv)


def _image(args: argparse.Namespace) -> Any:
    from loopmeta.model_configs import deepseek_ocr2_tiny as tiny

    if args.image is None:
        return tiny.synthetic_page(1600, 1200)
    from PIL import Image

    if not args.image.is_file():
        raise UserError(f"image {args.image} not found")
    return Image.open(args.image).convert("RGB")


def builtin_session(args: argparse.Namespace) -> Session:
    import torch

    from loopmeta.model_configs import deepseek_ocr2_tiny as tiny

    if not tiny.is_available():
        import transformers

        raise UserError(f"the built-in model needs transformers 5.x with deepseek_ocr2; installed "
                        f"{transformers.__version__}. `pip install -U transformers` or pass --model.")
    model = tiny.build_model(args.builtin, dtype=getattr(torch, args.dtype),
                             experts_implementation=args.experts_implementation).to(args.device)
    inputs = tiny.prepare_inputs(tiny.build_processor(), _image(args), args.prompt).to(args.device)
    return Session(model, lambda: model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False),
                   f"built-in {args.builtin} random-weight DeepSeek-OCR 2", args.config)


def hub_session(args: argparse.Namespace) -> Session:
    import torch
    from transformers import AutoConfig

    common = dict(revision=args.revision, trust_remote_code=args.trust_remote_code)
    try:
        hf_config = AutoConfig.from_pretrained(args.model, **common)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the config of {args.model!r}: {exc}\nOffline, the weights must be in the "
                        "local Hugging Face cache or a local folder; remote code needs --trust-remote-code.") from None
    archs = getattr(hf_config, "architectures", None) or []
    dtype = getattr(torch, args.dtype)
    if "DeepseekOCRForCausalLM" in archs:  # v1 remote code: drive the vendor's own infer()
        from transformers import AutoModel, AutoTokenizer

        if args.image is None:
            raise UserError("DeepSeek-OCR v1 runs its own infer() on an image file: pass --image")
        model = AutoModel.from_pretrained(args.model, _attn_implementation=args.attn_implementation or "eager",
                                          torch_dtype=dtype, **common).eval().to(args.device)
        tokenizer = AutoTokenizer.from_pretrained(args.model, **common)
        mode = V1_MODES[args.mode]

        def run() -> Any:
            return model.infer(tokenizer, prompt=args.prompt, image_file=str(args.image), output_path=str(args.out),
                               save_results=False, eval_mode=True, **mode)

        # v1's infer() and forward call .cuda(); on CPU users no-op it (reference facts), for this run only
        on_cpu = torch.device(args.device).type == "cpu"
        return Session(model, run, f"{args.model} (v1 remote code, mode {args.mode}"
                       + (", .cuda() as a no-op)" if on_cpu else ")"), args.config, cuda_noop=on_cpu)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    try:
        model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, **extra, **common)
        processor = AutoProcessor.from_pretrained(args.model, **common)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"cannot load {args.model!r} ({', '.join(archs) or 'unknown architecture'}) as an image-text "
                        f"model with a processor: {exc}\nrun_traced.py drives DeepSeek-OCR v1 (remote code) and "
                        "DeepSeek-OCR 2; for other models use the Python API (trace_session with a config, or the "
                        "config-free structural_report).") from None
    model = model.eval().to(args.device)
    if args.experts_implementation:
        model.set_experts_implementation(args.experts_implementation)
    inputs = processor(images=_image(args), text=args.prompt, return_tensors="pt").to(args.device)
    return Session(model, lambda: model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False),
                   args.model, args.config)


def report_from_events(path: Path, config: str) -> Any:
    """The session report of a saved event stream, without the model (no TorchLens probe)."""
    from loopmeta.merge import session_report
    from loopmeta.patches import load_config, read_events

    if not path.is_file():
        raise UserError(f"event file {path} not found")
    header, events = read_events(path)
    chosen = load_config(header.config if config == "auto" else config)
    return session_report(events, chosen, model_class=header.model_class, sizes=header.containers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    try:
        from loopmeta.merge.capture import CaptureError
        from loopmeta.merge.merger import MergeError
        from loopmeta.merge.render import to_text
        from loopmeta.merge.report import ExactnessError, write_report
        from loopmeta.merge.session import trace_session
        from loopmeta.patches import ConfigError, EventFileError, InstrumentationError

        if args.from_events is not None:
            report = report_from_events(args.from_events, args.config)
            paths = write_report(report, args.out)
            print(to_text(report))
            console.print("wrote " + ", ".join(str(p) for p in paths.values()))
            return 0
        with console.status("building the model and inputs"):
            try:
                session = builtin_session(args) if args.model is None else hub_session(args)
            except (OSError, ValueError, ImportError) as exc:
                raise UserError(f"cannot load {args.model or 'the built-in model'}: {exc}") from None
        console.print(f"model: {session.label}")
        args.out.mkdir(parents=True, exist_ok=True)
        events = args.out / "events.jsonl"
        with console.status("running the instrumented session" + ("" if args.no_torchlens else
                                                                   ", then the TorchLens probe (prefill + 1 step)")), \
                tensor_cuda_noop(session.cuda_noop):
            report, _ = trace_session(session.model, session.run, config=session.config, events=events,
                                      probe=None if args.no_torchlens else "auto",
                                      check_versions=not args.ignore_version_pins,
                                      options={"expert_ledger": not args.no_expert_ledger})
        paths = write_report(report, args.out)
    except (UserError, ConfigError, InstrumentationError, MergeError, CaptureError, ExactnessError,
            EventFileError) as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return 2
    print(to_text(report))
    console.print(f"wrote {events}, " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
