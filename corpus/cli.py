"""`loopmeta corpus`: one events-only session per page, on every rank torchrun starts, into the Parquet store; rank 0
waits at a barrier, then aggregates with DuckDB and writes corpus.json, corpus.md and corpus.html (docs/corpus.md).

A page that fails is a row with its error and the rest runs; a rank that dies leaves the finished pages of every
rank in the store and the summary lists the pages without a result; a rerun with the same `--out` and options runs
the pages without a result or with an error (other options are refused: the store records the run's). Exit status:
0 when every page ran (with a result or its error), 1 when some did not (a rank died or was stopped), 2 for a
command-line error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..common.files import write_atomically
from ..errors import LoopmetaError, SessionError
from ..cli import check_device, fail, load_session, option, positive
from . import store
from .pages import Page, image_file, list_pages
from .shards import Group, Rank, device_of, shard, this_rank


SPEC_OPTIONS = ("model", "revision", "trust_remote_code", "prompt", "mode", "max_new_tokens", "dtype",
                "attn_implementation", "experts_implementation", "config")  # spec_of adds --option and --builtin


class Stopped(BaseException):
    """SIGTERM (torchrun stopping the ranks after one died) or Ctrl-C: stop, keep what is finished."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loopmeta corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", action="append", default=[], metavar="DIR|GLOB|FILE.pdf",
                   help="page images and PDFs: a folder (searched recursively), a glob or a file; repeatable")
    p.add_argument("--out", type=Path, default=Path("loopmeta-corpus"), help="store and summary folder; a rerun "
                   "with the same folder and options skips the pages with a result (default loopmeta-corpus)")
    p.add_argument("--model", help="hub id or local path (default: the built-in random-weight model)")
    p.add_argument("--builtin", default="tiny", help="size of the built-in model: tiny, quarter or full")
    p.add_argument("--revision", help="model revision (branch, tag or commit)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    p.add_argument("--prompt", help="prompt with one <image> tag (default: the model config's prompt)")
    p.add_argument("--mode", help="resolution mode, for models whose config lists modes")
    p.add_argument("--max-new-tokens", type=positive, default=4, help="tokens to make per page, at most (default 4)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when there are GPUs, else cpu), cpu, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2 (model default when omitted)")
    p.add_argument("--experts-implementation", help="experts implementation, for models that have several")
    p.add_argument("--config", default="auto", help="force a model config: built-in name or .toml path")
    p.add_argument("--ignore-version-pins", action="store_true", help="instrument outside the config's pins")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", type=option,
                   help="an option for the model config's extractors (repeatable)")
    p.add_argument("--probe-first", action="store_true",
                   help="trace rank 0's first page with TorchLens as well and check that it aligns with the events")
    args = p.parse_args(argv)
    args.image = []  # the pages come from --pages, one session each
    args.base_size = args.image_size = args.crop_mode = None  # infer() settings: its models run no corpus
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    rank = this_rank()
    try:
        pages = list_pages(args.pages)
        with writing(args.out):
            args.out.mkdir(parents=True, exist_ok=True)
            store.check_spec(args.out, spec_of(args))
        return run(args, pages, rank, console)
    except LoopmetaError as exc:
        fail(console, rank.tag + str(exc))
    return 2


def spec_of(args: argparse.Namespace) -> dict[str, Any]:
    """The options that change a page's result, as given (not the ranks, the device, the pages or the paths)."""
    return {**{key: getattr(args, key) for key in SPEC_OPTIONS}, "option": dict(args.option),
            "builtin": args.builtin if args.model is None else None}


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """An OSError while the store, the run metadata or the summaries are written: a one-line refusal naming --out."""
    try:
        yield
    except OSError as exc:
        raise SessionError(f"cannot use --out {out}: {exc.strerror or exc}; pass a writable folder") from None


def run(args: argparse.Namespace, pages: list[Page], rank: Rank, console: Any) -> int:
    """This rank's pages, then (rank 0) the merge; stopping early still merges what is finished."""
    previous = signal.signal(signal.SIGTERM, _stop)
    mine = shard(pages, rank)
    done = store.finished(args.out)
    todo = [p for p in mine if done.get(p.id) != store.OK]
    meta = {"rank": rank.rank, "world": rank.world, "pid": os.getpid(), "host": socket.gethostname(),
            "pages": [p.id for p in mine], "skipped": len(mine) - len(todo), "ran": [], "started": time.time()}
    try:
        with Group(rank) as group:
            try:
                if todo:
                    run_pages(args, todo, rank, meta, console)
                stopped = False
            except (Stopped, KeyboardInterrupt):
                stopped = True
                console.print(f"{rank.tag}stopped; the finished pages are kept in {args.out}", highlight=False)
            meta["finished"] = time.time()
            with writing(args.out):
                _write_meta(args.out, meta)
            complete = not stopped and group.barrier()
            if not rank.leader:
                return 0 if complete else 1
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the merge is short: finish it when told to stop
            with writing(args.out):
                return merge(args.out, pages, complete, console)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(signum: int, frame: Any) -> None:
    raise Stopped()


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    folder = out / "run"
    folder.mkdir(exist_ok=True)
    write_atomically(folder / f"rank-{meta['rank']}.json", json.dumps(meta, indent=1) + "\n")


def run_pages(args: argparse.Namespace, todo: list[Page], rank: Rank, meta: dict[str, Any], console: Any) -> None:
    """Load the model once, then one session per page; each page's rows are written before the next starts."""
    args.device = device_of(rank, args.device)
    check_device(args.device)
    meta["device"] = args.device
    with console.status(f"{rank.tag}building the model"):
        config, session = load_session(args, accept=runs_pages)
    if session.page is None:
        raise one_page(config, "its session driver gives no run per page (Session.page)")
    with writing(args.out):
        store.check_spec(args.out, spec_of(args), create=True)
    for i, page in enumerate(todo, 1):
        start = time.perf_counter()
        probe = args.probe_first and rank.leader and page is todo[0] and not meta["skipped"]
        with writing(args.out):
            line = run_one(args, page, config, session, rank, probe)
            if probe:
                meta["probe"] = {"page": page.id, "outcome": line}  # the TorchLens check: ok, or the alignment error
            meta["ran"].append(page.id)
            _write_meta(args.out, meta)
        console.print(f"{rank.tag}{i}/{len(todo)} {page.id}: {line} ({time.perf_counter() - start:.1f} s)",
                      highlight=False, markup=False)


def runs_pages(config: Any) -> None:
    """Refuse, before its model loads, a config that declares one page per loaded model (`[session] per_page`)."""
    if not config.session.per_page:
        raise one_page(config, "its session driver takes one image file per loaded model ([session] per_page = "
                               "false)")


def one_page(config: Any, why: str) -> SessionError:
    return SessionError(f"a corpus cannot run config {config.name!r}: {why}; trace its pages one at a time with "
                        "`loopmeta --image PAGE`, or use a config that runs pages (docs/corpus.md#models)")


def run_one(args: argparse.Namespace, page: Page, config: Any, session: Any, rank: Rank, probe: bool) -> str:
    """Run and store one page; its one-line outcome."""
    from .session import page_tables

    for table in store.TABLES:
        store.part_path(args.out, table, page.key).unlink(missing_ok=True)
    row: dict[str, Any] = {"page": page.id, "rank": rank.rank}
    start = time.perf_counter()
    try:
        if page.error:
            raise SessionError(page.error)
        with image_file(page) as image, tempfile.TemporaryDirectory(prefix="loopmeta-corpus-") as folder:
            tables, summary = page_tables(args, config, session, image, Path(folder) / "events.jsonl", probe)
    except Exception as exc:  # a bad page is its own error; the corpus goes on
        text = str(exc) if isinstance(exc, LoopmetaError) else f"{type(exc).__name__}: {exc}"
        error = text.replace(str(page.path), page.id)
        row.update(status=store.ERROR, error=error, seconds=round(time.perf_counter() - start, 3))
        store.write_part(args.out, "sessions", page.key, {k: [v] for k, v in row.items()})
        return f"error: {error}"
    for table, columns in tables.items():
        if columns and len(next(iter(columns.values()))):
            n = len(next(iter(columns.values())))
            store.write_part(args.out, table, page.key, {"page": [page.id] * n, "rank": [rank.rank] * n, **columns})
    row.update(status=store.OK, error=None, seconds=round(time.perf_counter() - start, 3), **summary)
    store.write_part(args.out, "sessions", page.key, {k: [v] for k, v in row.items()})
    return f"ok, {summary['steps']} steps, prefill {summary['prefill_len']}"


def merge(out: Path, pages: list[Page], complete: bool, console: Any) -> int:
    """Rank 0: aggregate the store, write corpus.json / .md / .html and run.json, print the summary."""
    from .aggregate import corpus
    from .summary import summary_text, write_html

    data = corpus(out, [p.id for p in pages])
    write_atomically(out / "corpus.json", json.dumps(data, indent=1) + "\n")
    text = summary_text(data)
    write_atomically(out / "corpus.md", text)
    written = [out / "corpus.json", out / "corpus.md", *write_html(data, out / "corpus.html")]
    ranks = sorted((out / "run").glob("rank-*.json"))
    write_atomically(out / "run.json", json.dumps({"complete": complete, "merged": time.time(), "ranks": [
        json.loads(p.read_text()) for p in ranks]}, indent=1) + "\n")
    print(text, end="")
    console.print("wrote " + ", ".join(str(p) for p in [*written, out / "run.json"]), highlight=False)
    return 1 if data["pages"]["missing"] else 0
