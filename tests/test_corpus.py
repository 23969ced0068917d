"""`loopmeta corpus`: a dozen synthetic pages on the built-in model, with one and two ranks (torchrun, gloo), a rank
killed mid-run, bad pages. Every aggregate is checked against the per-page reports built one by one with the
single-session path (`trace_session`, events only) or against the processor's and generate()'s own outputs, never
against the corpus code's own output."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import needs_transformers5

pytest.importorskip("pyarrow")
duckdb = pytest.importorskip("duckdb")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NEW_TOKENS = 3
# even pages (rank 0 of 2) have no crops (<= 768 px); odd pages (rank 1) have 2 to 6 crops
SIZES = [(640, 480), (1600, 1200), (500, 700), (900, 700), (768, 600), (1000, 1400), (600, 400), (2000, 800),
         (700, 760), (1300, 900), (300, 420), (1200, 1600)]


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def corpus_command(ranks: int, *args: str) -> list[str]:
    """`loopmeta corpus ...`, under torchrun for more than one rank (the documented `--no-python loopmeta` form
    when the console script is on PATH, else `python -m torch.distributed.run ... -m loopmeta.run_traced`)."""
    if ranks == 1:
        return [sys.executable, str(REPO / "run_traced.py"), "corpus", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    if shutil.which("loopmeta", path=env()["PATH"]):
        return [*launcher, "--no-python", "loopmeta", "corpus", *args]
    return [*launcher, "-m", "loopmeta.run_traced", "corpus", *args]


def run_corpus(ranks: int, pages: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(corpus_command(ranks, "--pages", str(pages), "--out", str(out), "--max-new-tokens",
                                         str(NEW_TOKENS), *extra), capture_output=True, text=True, timeout=600,
                          env=env(), cwd=out.parent)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    from loopmeta.sessions.pages import synthetic_page

    folder = tmp_path_factory.mktemp("corpus") / "pages"
    folder.mkdir()
    for i, (w, h) in enumerate(SIZES):
        synthetic_page(w, h, seed=i).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def singles(pages):
    """page id -> that page alone: its report from the single-session path (events only), and from the processor
    and generate() themselves its crops (`num_local_patches`), image tokens (the image token id in `input_ids`)
    and tokens made (generate's output past the prompt)."""
    import torch

    from loopmeta.builtin_models.deepseek_ocr2_tiny import build_model, build_processor, prepare_inputs
    from loopmeta.pipeline import trace_session
    from loopmeta.sessions.pages import load_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the corpus runs (torchrun's OMP_NUM_THREADS=1)
    model, processor = build_model(), build_processor()
    found = {}
    try:
        for path in sorted(pages.iterdir()):
            inputs = prepare_inputs(processor, load_image(path))
            report, output = trace_session(
                model, lambda: model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False), probe=None)
            ids = inputs["input_ids"]
            found[path.name] = SimpleNamespace(
                report=report, crops=int(inputs["num_local_patches"].sum()), made=output.shape[1] - ids.shape[1],
                image_tokens=int((ids == model.config.image_token_id).sum()))
    finally:
        torch.set_num_threads(threads)
    return found


@pytest.fixture(scope="module")
def oracle(singles):
    """page id -> the report of that page alone."""
    return {page: single.report for page, single in singles.items()}


@pytest.fixture(scope="module")
def two_ranks(pages):
    out = pages.parent / "two"
    done = run_corpus(2, pages, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def loop(data: dict, name: str) -> dict[int, int]:
    (found,) = [entry for entry in data["loops"] if entry["loop"] == name]
    return {d["bound"]: d["pages"] for d in found["distribution"]}


@needs_transformers5
def test_two_ranks_equal_the_pages_one_by_one(two_ranks, oracle, singles):
    out, done = two_ranks
    data = json.loads((out / "corpus.json").read_text())
    reports = oracle.values()
    assert data["pages"] == {"total": 12, "with_result": 12, "errors": [], "missing": []}
    assert loop(data, "model.vision_tower") == Counter(r.counts["model.vision_tower"] for r in reports)
    assert loop(data, "model.multi_modal_projector") == Counter(r.counts["model.multi_modal_projector"]
                                                                for r in reports)
    (steps,) = [entry for entry in data["loops"] if entry["axis"] == "decode_step"]
    assert {d["bound"]: d["pages"] for d in steps["distribution"]} == Counter(r.counts[""] for r in reports)
    hist = {name: dict(map(tuple, b["histogram"])) for name, b in data["bounds"].items()}
    assert hist["prefill_len"] == Counter(r.steps[0]["seq_len"] for r in reports)
    assert hist["generated_tokens"] == Counter(single.made for single in singles.values())
    assert hist["crops"] == Counter(single.crops for single in singles.values())
    assert hist["image_tokens"] == Counter(single.image_tokens for single in singles.values())
    assert set(hist["crops"]) >= {0, 6}
    (tower,) = [entry for entry in data["loops"] if entry["loop"] == "model.vision_tower"]
    assert tower["kind"] == "parfor"  # one call on the pages without crops, two on the others
    assert data["bounds"]["prefill_len"]["max"] == max(r.steps[0]["seq_len"] for r in reports)
    load: dict[tuple[int, int], int] = defaultdict(int)
    for r in reports:
        for row in r.moe["rows"]:
            layer = int(re.search(r"\.(\d+)\.", row["address"]).group(1))
            for expert, tokens in zip(row["experts"], row["tokens"]):
                load[layer, expert] += tokens
    assert {(r["layer"], r["expert"]): r["tokens"] for r in data["experts"]["load"]} == load
    for layer in data["experts"]["layers"]:
        mine = [t for (lay, _), t in load.items() if lay == layer["layer"]]
        assert layer["imbalance"] == round(max(mine) / (sum(mine) / 8), 3)
    ks = defaultdict(list)
    for r in reports:
        for row in r.moe["rows"]:
            ks[row["step"]].append(row["k"])
    assert [(s["step"], s["calls"], s["k_min"], s["k_max"]) for s in data["k_per_step"]] == [
        (step, len(k), min(k), max(k)) for step, k in sorted(ks.items())]
    classes = Counter((frozenset(r.counts), tuple(s["phase"] for s in r.steps)) for r in reports)
    assert sorted(s["pages"] for s in data["structures"]) == sorted(classes.values())
    assert "12 pages, 12 with a result" in done.stdout


@needs_transformers5
def test_the_store_answers_sql(two_ranks, oracle):
    """The user's own SQL over the Parquet files: calls per page equal the report's observed call counts."""
    out, _ = two_ranks
    calls = dict(duckdb.sql(f"SELECT page, count(*) FROM read_parquet('{out}/store/calls/*.parquet', "
                            "union_by_name = true) GROUP BY page").fetchall())
    assert calls == {page: sum(r.counts.values()) for page, r in oracle.items()}
    ranks = dict(duckdb.sql(f"SELECT page, rank FROM read_parquet('{out}/store/sessions/*.parquet', "
                            "union_by_name = true)").fetchall())
    assert ranks == {f"p{i:02d}.png": i % 2 for i in range(12)}


@needs_transformers5
def test_the_documented_queries_run(two_ranks, oracle, singles, monkeypatch):
    """docs/corpus.md's three example queries run on a store, from its folder, and agree with the page reports."""
    out, _ = two_ranks
    queries = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "corpus.md").read_text(), re.S)
    monkeypatch.chdir(out)
    crops, busiest, calls = (duckdb.sql(q).fetchall() for q in queries)
    assert {row[0]: row[1] for row in crops} == Counter(single.crops for single in singles.values())
    decode: dict[tuple[int, int], int] = defaultdict(int)
    for r in oracle.values():
        for row in r.moe["rows"]:
            if row["step"] > 0:
                for expert, tokens in zip(row["experts"], row["tokens"]):
                    decode[int(re.search(r"\.(\d+)\.", row["address"]).group(1)), expert] += tokens
    assert len(busiest) == min(10, len(decode)) and all(decode[layer, expert] == t for layer, expert, t, _ in busiest)
    assert [row[2] for row in busiest] == sorted(decode.values(), reverse=True)[:len(busiest)]
    total = sum(sum(r.counts.values()) for r in oracle.values())
    assert round(sum(row[2] for row in calls), 6) == round(total / len(oracle), 6)


@needs_transformers5
def test_one_rank_gives_the_same_corpus_json(two_ranks, pages):
    out_two, _ = two_ranks
    out = pages.parent / "one"
    done = run_corpus(1, pages, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "corpus.json").read_bytes() == (out_two / "corpus.json").read_bytes()
    assert (out / "corpus.md").read_text() == (out_two / "corpus.md").read_text()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


@needs_transformers5
def test_a_rerun_with_other_options_is_refused(two_ranks, pages):
    """A store run with other options is refused by every rank that gets to check it (torchrun stops the other ranks
    as soon as one fails, so a slower rank may be stopped before it prints), in one line naming them; the store is
    left alone."""
    out, _ = two_ranks
    before = snapshot(out)
    done = run_corpus(1, pages, out, "--max-new-tokens", "2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"--max-new-tokens {NEW_TOKENS} there, 2 now" in line and "pass another --out" in line
    both = run_corpus(2, pages, out, "--builtin", "quarter", "--option", "expert_ledger=false")
    refusals = [line for line in both.stderr.splitlines() if "holds pages run with other options" in line]
    assert both.returncode != 0 and "corpus/cli.py" not in both.stderr  # torchrun's own traceback aside
    tags = [re.search(r"\[rank \d/2\]", line).group() for line in refusals]
    assert tags and set(tags) <= {"[rank 0/2]", "[rank 1/2]"} and len(set(tags)) == len(tags)
    assert all('--builtin "tiny" there, "quarter" now' in line and "--option {} there" in line for line in refusals)
    assert snapshot(out) == before
    older = pages.parent / "older"
    shutil.copytree(out, older)
    (older / "store" / "spec.json").unlink()  # a store made before stores recorded their options
    done = run_corpus(1, pages, older)
    assert done.returncode == 2 and "no record of the options" in done.stderr and "Traceback" not in done.stderr


@needs_transformers5
def test_a_killed_rank_loses_only_its_unfinished_pages(pages, oracle):
    out = pages.parent / "killed"
    proc = subprocess.Popen(corpus_command(2, "--pages", str(pages), "--out", str(out), "--max-new-tokens",
                                           str(NEW_TOKENS)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), cwd=pages.parent)
    deadline, killed = time.time() + 300, None
    while killed is None and time.time() < deadline and proc.poll() is None:
        try:
            first, second = (json.loads((out / "run" / f"rank-{r}.json").read_text()) for r in (0, 1))
        except (OSError, ValueError):
            first = second = None
        if first and len(first["ran"]) == 6 and 1 <= len(second["ran"]) < 6:
            os.kill(second["pid"], signal.SIGKILL)
            killed = second["ran"]
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed, f"rank 1 was not caught mid-run: {stderr[-2000:]}"
    assert proc.returncode != 0
    data = json.loads((out / "corpus.json").read_text())
    done = set(first["ran"]) | set(killed)
    missing = sorted(set(oracle) - done)
    assert data["pages"]["missing"] == missing and len(missing) >= 1
    assert "without a result (rerun with the same --out to run them): " + ", ".join(missing) in stdout
    calls = dict(duckdb.sql(f"SELECT page, count(*) FROM read_parquet('{out}/store/calls/*.parquet') "
                            "GROUP BY page").fetchall())
    assert calls == {page: sum(oracle[page].counts.values()) for page in done}
    finished = {p: p.stat().st_mtime_ns for p in (out / "store" / "sessions").iterdir()}
    again = run_corpus(2, pages, out)
    assert again.returncode == 0, again.stderr[-3000:]
    ranks = json.loads((out / "run.json").read_text())["ranks"]
    assert sorted(page for r in ranks for page in r["ran"]) == missing
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    whole = json.loads((out / "corpus.json").read_text())
    assert whole["pages"] == {"total": 12, "with_result": 12, "errors": [], "missing": []}
    assert loop(whole, "model.vision_tower") == Counter(r.counts["model.vision_tower"] for r in oracle.values())


@needs_transformers5
def test_bad_pages_are_errors_and_the_rest_runs(tmp_path):
    from PIL import Image

    from loopmeta.sessions.pages import synthetic_page

    folder = tmp_path / "pages"
    folder.mkdir()
    synthetic_page(640, 480).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "fake.pdf").write_text("not a pdf")
    first, second = synthetic_page(500, 700, seed=1), synthetic_page(900, 700, seed=2)
    first.save(folder / "doc.pdf", save_all=True, append_images=[second])
    (tmp_path / "empty").mkdir()
    command = corpus_command(1, "--pages", str(folder), "--pages", str(tmp_path / "empty"), "--out",
                             str(tmp_path / "out"), "--max-new-tokens", "2")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "corpus.json").read_text())
    errors = {e["page"]: e["error"] for e in data["pages"]["errors"]}
    assert set(errors) == {"broken.png", "fake.pdf", "empty"}
    assert "cannot be decoded" in errors["broken.png"] and "not a readable PDF" in errors["fake.pdf"]
    assert "empty folder" in errors["empty"]
    assert str(tmp_path) not in (tmp_path / "out" / "corpus.json").read_text()
    assert data["pages"]["with_result"] == 3 and data["pages"]["total"] == 6  # good.png, doc.pdf#1, doc.pdf#2
    rendered = dict(duckdb.sql(f"SELECT page, width FROM read_parquet('{tmp_path}/out/store/sessions/*.parquet', "
                               "union_by_name = true) WHERE status = 'ok'").fetchall())
    assert rendered["doc.pdf#1"] == round(500 * 150 / 72) and Image.open(folder / "good.png").size[0] == 640
    assert (tmp_path / "out" / "corpus.html").read_text().count("<svg") >= 2
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (rank,) = json.loads((tmp_path / "out" / "run.json").read_text())["ranks"]
    assert sorted(rank["ran"]) == sorted(errors) and rank["skipped"] == 3  # errors run again, results do not


def test_command_line_errors_are_one_line(tmp_path):
    for args in (["--out", str(tmp_path / "o")], ["--pages", str(tmp_path / "nothing")],
                 ["--pages", str(tmp_path), "--max-new-tokens", "0"]):
        done = subprocess.run(corpus_command(1, *args), capture_output=True, text=True, timeout=300, env=env(),
                              cwd=tmp_path)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr and done.stderr.strip(), args
    assert "no such folder or file" in done.stderr or "positive" in done.stderr


@pytest.mark.parametrize("config", ["deepseek_ocr_v1", "deepseek_ocr2_remote"])
def test_configs_of_one_image_are_refused_before_loading(tmp_path, config):
    """The configs driven by the vendor's infer() take one image file per loaded model: refused for what they are,
    before any weight loads (the model folder does not even exist) and before the store is made."""
    from loopmeta.sessions.pages import synthetic_page

    (tmp_path / "pages").mkdir()
    synthetic_page(64, 48).save(tmp_path / "pages" / "a.png")
    done = subprocess.run(corpus_command(1, "--pages", str(tmp_path / "pages"), "--out", str(tmp_path / "out"),
                                         "--model", str(tmp_path / "absent"), "--config", config, "--device", "cpu"),
                          capture_output=True, text=True, timeout=300, env=env(), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"a corpus cannot run config '{config}'" in line and "per_page" in line
    assert not (tmp_path / "out" / "store").exists()


def test_an_oserror_names_out_only_when_writing_it(tmp_path, monkeypatch, capsys):
    """A failed store write is a one-line refusal with the error's text (pyarrow's have no strerror); an OSError
    elsewhere (here: loading the model) is not reported as a problem of --out."""
    from loopmeta.corpus import cli, store

    def full(*args, **kwargs):
        raise OSError("quota exceeded")

    (tmp_path / "empty").mkdir()  # a source without pages: an error row, written without running a model
    argv = ["--pages", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    monkeypatch.setattr(cli, "load_session", lambda *a, **k: (SimpleNamespace(name="c"), SimpleNamespace(page=id)))
    monkeypatch.setattr(store, "write_part", full)
    assert cli.main(argv) == 2
    assert f"cannot use --out {tmp_path / 'out'}: quota exceeded; pass a writable folder" in capsys.readouterr().err
    monkeypatch.setattr(cli, "load_session", full)
    with pytest.raises(OSError, match="quota exceeded"):
        cli.main(argv)


def test_a_spec_file_is_created_once(tmp_path):
    """Ranks racing to record the store's options: exactly one creates the file, and it holds that one's text."""
    from concurrent.futures import ThreadPoolExecutor

    from loopmeta.common.files import create_once

    path = tmp_path / "spec.json"
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: create_once(path, f"{i}\n" * 1000), range(32)))
    (winner,) = [i for i, ok in enumerate(made) if ok]
    assert path.read_text() == f"{winner}\n" * 1000 and [p.name for p in tmp_path.iterdir()] == ["spec.json"]


def test_a_loop_that_is_one_call_on_some_pages_is_a_parfor(tmp_path):
    """The kind of a loop over the pages: parfor when a parfor on some page, though a single call on others."""
    from loopmeta.corpus import aggregate, store

    for page, kind, bound in (("a", "call", 1), ("b", "parfor", 3), ("c", "parfor", 2)):
        store.write_part(tmp_path, "loops", page, {
            "page": [page] * 2, "loop": ["tower", "layers[0..1]"], "kind": [kind, "for"], "bound": [bound, 2],
            "axis": ["view", "layer"], "role": ["r", "r"], "stage": ["s", "s"]})
        store.write_part(tmp_path, "sessions", page, {"page": [page], "rank": [0], "status": ["ok"]})
    loops = {entry["loop"]: entry for entry in aggregate.corpus(tmp_path, ["a", "b", "c"])["loops"]}
    assert (loops["tower"]["kind"], loops["layers[0..1]"]["kind"]) == ("parfor", "for")
    assert [(d["bound"], d["pages"]) for d in loops["tower"]["distribution"]] == [(1, 1), (2, 1), (3, 1)]


def test_corpus_modules_import_light():
    code = ("import sys, loopmeta.corpus.cli, loopmeta.corpus.aggregate, loopmeta.corpus.store\n"
            "print(sorted(m for m in ('torch', 'pyarrow', 'duckdb', 'pypdfium2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_pages_of_folders_globs_and_pdfs(tmp_path):
    """Page ids relative to their source, PDFs one page per page, sources without pages as error pages."""
    from loopmeta.corpus.pages import image_file, list_pages
    from loopmeta.errors import SessionError
    from loopmeta.sessions.pages import synthetic_page

    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    synthetic_page(64, 48).save(folder / "a.png")
    synthetic_page(40, 30).save(folder / "sub" / "b.png")
    synthetic_page(144, 72).save(folder / "doc.pdf", save_all=True, append_images=[synthetic_page(72, 144)])
    (folder / "fake.pdf").write_text("%PDF? no")
    (folder / "notes.txt").write_text("not a page")
    pages = list_pages([str(folder)])
    assert [p.id for p in pages] == ["a.png", "doc.pdf#1", "doc.pdf#2", "fake.pdf", "sub/b.png"]
    assert [p.id for p in pages if p.error] == ["fake.pdf"] and "not a readable PDF" in pages[3].error
    with image_file(pages[2]) as rendered:
        from PIL import Image

        assert Image.open(rendered).size == (150, 300)  # 72 x 144 points at 150 dpi
    assert [p.id for p in list_pages([str(folder / "**" / "*.png")])] == ["a.png", "sub/b.png"]
    (nothing,) = list_pages([str(folder / "*.jpg")])
    assert nothing.error == "--pages *.jpg: no file matches"
    with pytest.raises(SessionError, match="given twice"):
        list_pages([str(folder), str(folder / "a.png")])


def test_the_corpus_options_make_a_session_request():
    """The corpus parser gives every field the shared session request reads (no model needed)."""
    from loopmeta.cli import request_of
    from loopmeta.corpus.cli import parse_args

    request = request_of(parse_args(["--pages", "pages", "--max-new-tokens", "2"]))
    assert (request.images, request.settings, request.max_new_tokens, request.model) == ((), {}, 2, None)
