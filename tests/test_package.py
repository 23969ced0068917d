"""The package's face and shape: the documented entry points, one error base, light imports, the import graph
flowing one way, no model knowledge in the engine, and a built wheel that works outside the checkout."""

from __future__ import annotations

import ast
import doctest
import importlib
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import loopmeta
from loopmeta import errors

ROOT = Path(loopmeta.__file__).resolve().parent
ENGINE = ["common", "events", "sessions", "patches", "probe", "merge", "report", "work", "exports", "writers", "traces",
          "corpus", "pipeline.py", "errors.py"]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (tests, benchmarks and docs are not part of it)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "bench", "docs", "build") or any(p.startswith(".") for p in rel.parts):
            continue
        parts = ["loopmeta", *rel.with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """The loopmeta modules `name` imports at module level (absolute or relative)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module or ""
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in known and m != name}


def test_the_documented_face():
    for name in ("instrument", "uninstrument", "trace_session", "trace_structure", "read_report", "write_report",
                 "LoopmetaError", "Report", "Instrumentation"):
        assert getattr(loopmeta, name) is not None, name
    refusals = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(refusals) >= 9 and all(issubclass(c, loopmeta.LoopmetaError) for c in refusals)
    assert not any(issubclass(c, (AssertionError, ValueError, RuntimeError)) for c in refusals)


def test_docstring_examples_run():
    for module in (loopmeta, importlib.import_module("loopmeta.common.tensors"),
                   importlib.import_module("loopmeta.common.attributes"), importlib.import_module("loopmeta.work.formulas"),
                   importlib.import_module("loopmeta.work.roofline"),
                   importlib.import_module("loopmeta.common.addresses"),
                   importlib.import_module("loopmeta.events.labels"), importlib.import_module("loopmeta.corpus.pages"),
                   importlib.import_module("loopmeta.corpus.shards")):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_import_is_light():
    code = "import sys, loopmeta; print(sorted(m for m in ('torch', 'transformers', 'torchlens') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_import_cycles():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    assert graph["loopmeta.pipeline"] >= {"loopmeta.patches.instrumentation", "loopmeta.probe.capture"}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import cycle: " + " -> ".join(path + (name,))
        if name not in done:
            for dep in graph[name]:
                visit(dep, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())


# What each part may import (docs/architecture.md); errors and common are open to all.
LAYERS = {
    "errors": set(), "common": set(), "events": set(), "sessions": set(), "model_configs": {"events", "sessions"},
    "builtin_models": {"sessions"}, "patches": {"model_configs", "events"}, "probe": {"merge"},
    "merge": {"events"}, "report": {"merge", "model_configs", "events"}, "work": {"probe", "events"},
    "exports": {"work", "report"}, "writers": {"report", "merge", "events", "work", "exports"},
    "pipeline": {"patches", "merge", "probe", "report", "model_configs", "events", "work"},
    "traces": {"events"},
    "corpus": {"cli", "pipeline", "events", "merge", "report", "writers"},
}


def test_imports_follow_the_data_flow():
    part = lambda name: name.split(".")[1] if name.count(".") else "loopmeta"  # noqa: E731
    for name, path in modules().items():
        if part(name) not in LAYERS:
            continue  # the package face and the command line may use every part
        allowed = LAYERS[part(name)] | {part(name), "errors", "common"}
        wrong = sorted(d for d in imports_of(name, path) if part(d) not in allowed)
        assert not wrong, f"{name} imports {wrong}"


def test_no_module_is_too_long():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items() if len(p.read_text().splitlines()) > 400}
    assert not long


def test_no_function_is_too_long():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)" for name, path in modules().items()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long


_MODEL_WORDS = re.compile(r"deepseek|transformers|hugging|qwen|llama|\bgenerate\b|\binfer\b|\bsam\b|\bclip\b", re.I)


def code_without_docs(path: Path) -> str:
    """Source text without comments and documentation strings (docstrings, attribute docstrings)."""
    source = path.read_text()
    docs = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docs |= set(range(node.lineno, node.end_lineno + 1))
    kept = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type != tokenize.COMMENT and tok.start[0] not in docs]
    return " ".join(kept)


@pytest.mark.parametrize("part", ENGINE)
def test_the_engine_names_no_model_or_framework(part):
    paths = [ROOT / part] if part.endswith(".py") else sorted((ROOT / part).rglob("*.py"))
    hits = {p.name: sorted(set(_MODEL_WORDS.findall(code_without_docs(p)))) for p in paths}
    assert not {k: v for k, v in hits.items() if v}


def test_the_detector_sees_model_knowledge():
    """The check above can fail: the command line's and the adapters' code does name models and frameworks."""
    assert _MODEL_WORDS.findall(code_without_docs(ROOT / "model_configs" / "hf.py"))


def test_built_wheel_works_outside_the_checkout(tmp_path, v1_sessions):
    source = tmp_path / "source"  # a copy, so that building leaves the checkout untouched
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".venv*",
                                                                "loopmeta-out", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("loopmeta-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    events = v1_sessions["base"]["path"]
    code = ("import importlib, sys, loopmeta; from loopmeta.model_configs import builtin_configs, load_config\n"
            "print(loopmeta.__file__)\n"
            f"for name in {sorted(modules())!r}: importlib.import_module(name)\n"
            "for name in builtin_configs(): load_config(name).adapter_module\n"
            "from loopmeta.run_traced import main\n"
            f"sys.exit(main(['--from-events', {str(events)!r}, '--out', 'out']))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(site), "PATH": "", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(site))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "report.html", "report.json", "report.md", "report.txt", "trace.json"]  # the stream has call times; no dot
    assert "model.sam_model" in (tmp_path / "out" / "report.txt").read_text()


def test_docs_cited_in_the_tree_exist():
    """Every `docs/...md#anchor` named in code, configs and docs is a file with that heading."""
    cited = set()
    for path in ROOT.rglob("*"):
        if path.suffix in (".py", ".toml", ".md") and not {"build", ".git"} & set(path.relative_to(ROOT).parts):
            cited |= set(re.findall(r"docs/\w[\w/.-]*\.md(?:#[\w-]+)?", path.read_text(encoding="utf-8")))
    assert len(cited) > 10
    for ref in sorted(cited):
        file, _, anchor = ref.partition("#")
        assert (ROOT / file).is_file(), ref
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / file).read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w -]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, ref


def test_pixi_tasks_run_what_exists_and_leave_pip_alone():
    """The Pixi tasks name scripts of this tree; the [tool.pixi] table is not what pip installs ([project] is)."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pixi = data["tool"]["pixi"]
    assert {"trace", "test"} <= set(pixi["tasks"])
    for name, command in pixi["tasks"].items():
        words = command.split()
        assert words[0] == "python", name
        assert words[1] == "-m" or (ROOT / words[1]).is_file(), f"pixi task {name}: {words[1]} is missing"
    assert pixi["pypi-dependencies"]["loopmeta"]["path"] == "."
    assert "pixi" not in str(data["project"]) and "torch>=2.1" in data["project"]["dependencies"]
