"""loopmeta's main job: trace one inference session end to end and write its loop report.

With no arguments it runs offline on a built-in tiny random-weight DeepSeek-OCR 2 (real transformers code, real
image processor, a small offline tokenizer, a synthetic page) and `generate`s a few tokens. Output folder: the
events (JSONL), the report (JSON, text, Markdown); the compact loop nest is printed. How a model is loaded and run
is its config's business (`[session]` in model_configs/*.toml); this file only turns options into a request.
Imports are absolute (`loopmeta.…`): `python run_traced.py` runs the installed package (the README's editable
install of this checkout) as the `loopmeta` console script does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from loopmeta.cli import check_device, fail, load_session, option, page, positive
from loopmeta.errors import MODEL_ERROR, ConfigError, LoopmetaError, SessionError


def kinds(text: str) -> list[str]:
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    wrong = [k for k in chosen if k not in ("genz", "llm-viewer", "csv")]
    if wrong or not chosen:
        raise argparse.ArgumentTypeError(f"{text!r}: exports are genz, llm-viewer and csv, comma-separated")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loopmeta", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="hub id or local path (default: built-in tiny DeepSeek-OCR 2, offline)")
    p.add_argument("--builtin", default="tiny",
                   help="size of the built-in random-weight model: tiny, quarter (quarter width, the real depths) "
                        "or full (the real shapes; for a GPU)")
    p.add_argument("--revision", help="model revision (branch, tag or commit)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (DeepSeek-OCR v1, "
                   "DeepSeek-OCR 2 remote code)")
    p.add_argument("--image", action="append", type=page, default=[], metavar="FILE|synthetic:WxH",
                   help="a page: an image file or a synthetic page of that size (default: synthetic:1600x1200); "
                        "repeat for a batch of pages, one sample each (image-text models)")
    p.add_argument("--prompt", help="prompt with one <image> tag (default: the model config's prompt)")
    p.add_argument("--mode", help="resolution mode, for models whose config lists modes (DeepSeek-OCR v1: tiny, "
                                   "small, base, large, gundam; default gundam. DeepSeek-OCR 2 remote code: card, "
                                   "the model card's base 1024, image 768, crop mode)")
    p.add_argument("--base-size", type=positive, help="infer()'s base_size, over the mode's (remote-code models)")
    p.add_argument("--image-size", type=positive, help="infer()'s image_size, over the mode's (remote-code models)")
    p.add_argument("--crop-mode", action=argparse.BooleanOptionalAction,
                   help="infer()'s crop_mode, over the mode's (remote-code models)")
    p.add_argument("--max-new-tokens", type=positive, default=4,
                   help="tokens to generate, at most (default 4; a vendor infer() that asks for more is capped here)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (default: what the model's config needs, else float32)")
    p.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2 (model default when omitted)")
    p.add_argument("--experts-implementation", help="DeepSeek-OCR 2 MoE experts: grouped_mm or eager")
    p.add_argument("--config", default="auto", help="force a model config: built-in name or .toml path")
    p.add_argument("--ignore-version-pins", action="store_true",
                   help="instrument even when the installed transformers is outside the config's pins")
    p.add_argument("--no-torchlens", action="store_true", help="events only: skip the TorchLens probe")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=option,
                   help="an option for the model config's extractors (repeatable; true/false/numbers are typed), "
                        "e.g. expert_ledger=false: DeepSeek-OCR 2 reads no router ids (no MoE selection)")
    p.add_argument("--from-events", type=Path, metavar="EVENTS_JSONL",
                   help="no model run: rebuild the report from a saved event stream (its config, or --config)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="with --from-events: report the finished steps of a stream that did not end normally, "
                        "marked incomplete")
    p.add_argument("--hardware", metavar="NAME|FILE.toml",
                   help="roofline bounds per stage on a built-in accelerator (h100, h200, a100, l40s, b200, mi300x) "
                        "or one described in a TOML file (needs the TorchLens probe)")
    p.add_argument("--export", type=kinds, default=[], metavar="genz,llm-viewer,csv",
                   help="write files for analytic simulators into the output folder (needs the TorchLens probe)")
    p.add_argument("--no-svg", action="store_true",
                   help="do not draw the loop nest (report.svg, which needs graphviz's dot program)")
    p.add_argument("--no-html", action="store_true",
                   help="write no report.html (one self-contained page: drawing, tables, charts)")
    p.add_argument("--no-trace", action="store_true",
                   help="write no trace.json (the recorded calls as a Perfetto / chrome://tracing timeline)")
    p.add_argument("--profile", action="store_true",
                   help="run the session under torch.profiler with each recorded call labelled: writes profile.json "
                        "(the profiler's trace) and profile.csv (host time per stage and step); docs/profiling.md")
    p.add_argument("--out", type=Path, default=Path("loopmeta-out"), help="output folder (default loopmeta-out)")
    return p.parse_args(argv)


def report_from_events(path: Path, config: str, allow_incomplete: bool) -> Any:
    """The session report of a saved event stream, without the model (no TorchLens probe). The stream names its
    config; only a built-in one is loaded by that name: reading a stream never runs code the stream names."""
    from loopmeta.events.stream import read_events
    from loopmeta.model_configs.config import builtin_configs, load_config
    from loopmeta.report.build import session_report

    if not path.is_file():
        raise SessionError(f"event file {path} not found: pass the events.jsonl a run wrote")
    header, table, end = read_events(path)
    if config == "auto":
        if header.config not in builtin_configs():
            raise ConfigError(f"{path} was recorded with config {header.config!r}, which is not built in: pass its "
                              "TOML with --config")
        config = header.config
    chosen = load_config(config)
    if chosen.name != header.config or (chosen.root_classes and header.model_class not in chosen.root_classes):
        raise ConfigError(f"config {chosen.name!r} (root classes {list(chosen.root_classes)}) does not match the "
                          f"stream, recorded with config {header.config!r} on a {header.model_class}: pass that "
                          "config, or leave --config out")
    return session_report(table, chosen, model_class=header.model_class, end=end,
                          container_sizes=header.container_sizes, allow_incomplete=allow_incomplete)


def run(args: argparse.Namespace, console: Any) -> int:
    from loopmeta.pipeline import trace_session
    from loopmeta.writers import to_text, write_report

    if (args.hardware or args.export) and args.no_torchlens:
        raise SessionError("--hardware and --export need the TorchLens probe's work: drop --no-torchlens")
    if args.profile and args.from_events is not None:
        raise SessionError("--profile needs a model run: drop --from-events")
    if args.hardware:
        from loopmeta.work.roofline import load_hardware

        args.hardware = load_hardware(args.hardware)  # refused before any model runs
    if args.from_events is not None:
        report = report_from_events(args.from_events, args.config, args.allow_incomplete)
        if args.hardware or args.export:
            carry_work(report, args.from_events.parent / "report.json")
        extras = add_work_outputs(report, args)
        paths = write_report(report, args.out, svg=not args.no_svg, html=not args.no_html)
        extras += time_outputs(args, args.from_events)
        print(to_text(report))
        console.print("wrote " + ", ".join(str(p) for p in [*paths.values(), *extras]))
        note_missing_svg(args, console)
        warn(report, console)
        return 0
    check_device(args.device)
    from loopmeta.sessions.progress import LiveProgress

    events = args.out / "events.jsonl"
    with LiveProgress(console) as progress:
        progress("building the model and inputs")
        config, session = load_session(args)
        console.print(f"model: {session.label}")
        with session.context():
            report, _ = trace_session(session.model, profiled_run(session.run, args), config=config, events=events,
                                      probe=None if args.no_torchlens else "auto",
                                      check_versions=not args.ignore_version_pins,
                                      options=dict(args.option), profile=args.profile, progress=progress)
        progress("writing the report files")
        extras = add_work_outputs(report, args)
        paths = write_report(report, args.out, svg=not args.no_svg, html=not args.no_html)
        extras += time_outputs(args, events)
        (args.out / "error.txt").unlink(missing_ok=True)  # an earlier run's model error, not this run's
    print(to_text(report))
    console.print(f"wrote {events}, " + ", ".join(str(p) for p in [*paths.values(), *extras]))
    note_missing_svg(args, console)
    warn(report, console)
    return 0


def note_missing_svg(args: argparse.Namespace, console: Any) -> None:
    """Say why report.svg was not written when the drawing was asked for and cannot be made here."""
    from loopmeta.writers.svg import svg_missing_reason

    reason = None if args.no_svg else svg_missing_reason()
    if reason:
        console.print(f"note: {reason}", markup=False, highlight=False)


def warn(report: Any, console: Any) -> None:
    """The report's warnings, last and loud on the console (the report's every form carries them too)."""
    from rich.text import Text

    for warning in report.warnings:
        console.print(Text("WARNING: ", style="bold red") + Text(warning, style="bold"), highlight=False)


def carry_work(report: Any, saved: Path) -> None:
    """Take the probe and work sections of the report a run wrote beside its events, when it is that session's."""
    from loopmeta.report.schema import read_report

    if not saved.is_file():
        raise SessionError(f"--hardware and --export need the work of a TorchLens probe: {saved} (the report the run "
                           "wrote beside its events) is missing")
    earlier = read_report(saved)
    if earlier.counts != report.counts or earlier.model_class != report.model_class or not earlier.work:
        raise SessionError(f"{saved} is not a report of this event stream with a work section: rerun the session "
                           "without --no-torchlens")
    report.probe, report.work = earlier.probe, earlier.work


def add_work_outputs(report: Any, args: argparse.Namespace) -> list[Path]:
    """Roofline bounds into the report (--hardware) and the simulator exports (--export); their paths."""
    if not (args.hardware or args.export):
        return []
    if not report.work:
        raise SessionError("--hardware and --export need the TorchLens probe's work: drop --no-torchlens")
    from loopmeta.exports.simulators import export
    from loopmeta.work.roofline import roofline

    phases = {s["step"]: s["phase"] for s in report.steps}
    report.work.pop("roofline", None)
    if args.hardware is not None:
        report.work["roofline"] = roofline(report.work, phases, args.hardware)
    return export(report.work, phases, args.export, args.out, args.hardware)


def profiled_run(run: Any, args: argparse.Namespace) -> Any:
    """The session's run, under torch.profiler when --profile asks (its trace goes to profile.json)."""
    if not args.profile:
        return run
    from loopmeta.traces.profile import profiled

    return profiled(run, args.out / "profile.json", cuda=args.device.startswith("cuda"))


def time_outputs(args: argparse.Namespace, events: Path) -> list[Path]:
    """trace.json from the events (unless --no-trace; none for a stream without call times) and, with --profile,
    profile.json and the table of its labels, profile.csv; their paths."""
    from loopmeta.traces.chrome import write_trace

    written = [] if args.no_trace else [write_trace(events, args.out / "trace.json")]
    if args.profile:
        from loopmeta.traces.profile import profile_table, write_table

        written += [args.out / "profile.json", write_table(profile_table(args.out / "profile.json"),
                                                           args.out / "profile.csv")]
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["corpus"]:  # `loopmeta corpus ...`: a corpus of pages (docs/corpus.md)
        from loopmeta.corpus.cli import main as corpus

        return corpus(argv[1:])
    args = parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)  # paths and messages stay whole, never wrapped
    started = time.time()
    try:
        return run(args, console)
    except LoopmetaError as exc:
        fail(console, str(exc))
    except KeyboardInterrupt:
        fail(console, interrupted(args.out / "events.jsonl" if args.from_events is None else None, started))
    except Exception as exc:
        message = None if args.from_events is not None else model_raised(exc, args.out)
        if message is None:  # not the model's own error: loopmeta's, whose traceback is the bug report
            raise
        fail(console, message)
    return 2


def model_raised(exc: Exception, out: Path) -> str | None:
    """What to say when a recorded module's forward raised `exc` (the model's own error: `errors.MODEL_ERROR`): the
    error on one line with the step, its traceback written to error.txt, and the session's events file; None for any
    other error."""
    import json
    import traceback

    session, step = getattr(exc, MODEL_ERROR, (None, None))
    if session is None:
        return None
    trace = out / "error.txt"
    try:
        trace.write_text("".join(traceback.format_exception(exc)))
        where = f"its traceback is in {trace}"
    except OSError as err:
        where = f"its traceback could not be written to {trace} ({err.strerror})"
    events = out / "events.jsonl"
    try:
        with events.open() as f:
            ours = json.loads(f.readline()).get("session") == session
    except (OSError, ValueError, AttributeError):
        ours = False
    kept = (f"events kept in {events} (rebuild the finished steps with --from-events {events} --allow-incomplete)"
            if ours else "no events file of this session was kept")
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"the model raised {type(exc).__name__}{': ' + first if first else ''} at step {step}; {where}; {kept}"


def interrupted(events: Path | None, started: float) -> str:
    """What an interrupted run leaves: the step it reached and the events file (one written since `started`, not an
    earlier run's)."""
    from loopmeta.events.stream import read_events

    if events is None or not events.is_file() or events.stat().st_mtime < started:
        return "interrupted before any event was recorded"
    try:
        stream = read_events(events)
    except LoopmetaError:
        return f"interrupted; events kept in {events} (incomplete)"
    steps = stream.end.steps if stream.end else len(set(stream.table.columns["step"]))
    return (f"interrupted at step {max(steps - 1, 0)}; events kept in {events} (incomplete: rebuild the finished steps "
            "with --from-events ... --allow-incomplete)")


if __name__ == "__main__":
    sys.exit(main())
