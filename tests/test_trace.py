"""trace.json: the recorded calls as a Chrome / Perfetto trace. The Trace Event Format rules are checked here on their
own (complete or matched events, microsecond times, proper nesting per thread), and the slices against what was
recorded: one per call, each inside its parent call's slice; the report stays byte-identical."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import needs_transformers5
from loopmeta.events import read_events
from loopmeta.patches import instrument
from loopmeta.traces.chrome import write_trace


def check_trace_event_format(doc: dict) -> dict[tuple, list[tuple[int, int, dict]]]:
    """The rules of the Trace Event Format's JSON object form that viewers rely on; returns the slices per (pid, tid)
    as (start ns, end ns, event), sorted by start with parents first."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    slices: dict[tuple, list[tuple[int, int, dict]]] = {}
    begun: dict[tuple, list[dict]] = {}
    for e in doc["traceEvents"]:
        assert e["ph"] in ("X", "B", "E", "M"), e
        assert isinstance(e["name"], str) and type(e["pid"]) is int and type(e["tid"]) is int, e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name") and isinstance(e["args"]["name"], str)
            continue
        assert type(e["ts"]) in (int, float) and e["ts"] >= 0, e
        assert isinstance(e.get("args", {}), dict)
        where = (e["pid"], e["tid"])
        if e["ph"] == "X":
            assert type(e["dur"]) in (int, float) and e["dur"] >= 0, e
            slices.setdefault(where, []).append((round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000), e))
        elif e["ph"] == "B":
            begun.setdefault(where, []).append(e)
        else:
            start = begun[where].pop()  # an E closes the last B of its thread
            assert start["ts"] <= e["ts"]
            slices.setdefault(where, []).append((round(start["ts"] * 1000), round(e["ts"] * 1000), start))
    assert not any(begun.values()), "a B event without its E"
    for where, found in slices.items():
        found.sort(key=lambda s: (s[0], -s[1]))
        open_: list[tuple[int, int, dict]] = []
        for start, end, e in found:
            while open_ and open_[-1][1] <= start:
                open_.pop()
            assert not open_ or end <= open_[-1][1], f"{e['name']} overlaps {open_[-1][2]['name']} on {where}"
            open_.append((start, end, e))
    return slices


def enclosing(slices: list[tuple[int, int, dict]]) -> dict[str, str | None]:
    """For each slice (by its call), the call of the innermost slice around it on the same thread, found from the
    intervals alone."""
    out = {}
    for start, end, e in slices:
        around = [(s, -t, o) for s, t, o in slices if o is not e and s <= start and end <= t]
        out[e["args"]["call"]] = max(around, key=lambda a: a[:2])[2]["args"]["call"] if around else None
    return out


def call_parents(events_path: Path) -> dict[str, str | None]:
    return {f"{e.address}:{e.call_index}": None if e.parent is None else f"{e.parent[0]}:{e.parent[1]}"
            for e in read_events(events_path).events}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The built-in tiny model through the command line: once as is (timed), once with --no-trace --profile."""
    from loopmeta.run_traced import main

    out = {}
    for name, extra in (("plain", []), ("profiled", ["--no-trace", "--profile"])):
        folder = tmp_path_factory.mktemp(name)
        started = time.perf_counter()
        assert main(["--out", str(folder), "--no-torchlens", "--max-new-tokens", "3", *extra]) == 0
        out[name] = (folder, time.perf_counter() - started)
    return out


@needs_transformers5
def test_the_trace_of_a_session_follows_the_format_and_the_calls(runs):
    folder, wall_s = runs["plain"]
    doc = json.loads((folder / "trace.json").read_text())
    per_thread = check_trace_event_format(doc)
    assert len(per_thread) == 1  # generate runs on one thread
    slices = [s for found in per_thread.values() for s in found]
    counts = json.loads((folder / "report.json").read_text())["counts"]
    assert len(slices) == sum(counts.values()) > 50  # one slice per recorded call
    assert Counter(e["name"] for _, _, e in slices) == Counter({a or "DeepseekOcr2ForConditionalGeneration": n
                                                                for a, n in counts.items()})
    span_us = (max(end for _, end, _ in slices) - min(start for start, _, _ in slices)) / 1000
    assert 0.02 * wall_s * 1e6 < span_us < wall_s * 1e6  # microseconds: the session is a good part of the run
    parents = call_parents(folder / "events.jsonl")
    for found in per_thread.values():
        assert enclosing(found) == {e["args"]["call"]: parents[e["args"]["call"]] for _, _, e in found}
    for _, _, e in slices:
        assert e["args"].get("parent") == parents[e["args"]["call"]]
        assert {"step", "phase", "stage", "role"} <= set(e["args"])
    lanes = [e["args"] for _, _, e in slices]
    assert {a["view"] for a in lanes if "view" in a} == {"global", "local"}
    assert any("experts_hit" in a for a in lanes) and any(a.get("layer") == 2 for a in lanes)
    assert sorted({a["step"] for a in lanes}) == [0, 1, 2]
    assert doc["otherData"]["time_origin_unix_ns"] == read_events(folder / "events.jsonl").header.time_origin_ns


@needs_transformers5
def test_times_never_reach_the_report(runs):
    """Same input, another run (with the profiler on): the report is byte-identical; --no-trace writes no trace."""
    (plain, _), (profiled, _) = runs["plain"], runs["profiled"]
    assert (plain / "report.json").read_bytes() == (profiled / "report.json").read_bytes()
    assert (plain / "report.txt").read_bytes() == (profiled / "report.txt").read_bytes()
    assert not (profiled / "trace.json").exists() and (plain / "trace.json").is_file()
    starts = [row[10] for line in (plain / "events.jsonl").read_text().splitlines()
              if '"kind":"calls"' in line for row in json.loads(line)["rows"]]
    assert len(set(starts)) == len(starts)  # the events do hold the times


class Sleepy(torch.nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x + 1


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Sleepy(0.02), Sleepy(0.001)

    def forward(self, x):
        return self.b(self.a(x))


def two_config(tmp_path: Path) -> Path:
    (tmp_path / "two.py").write_text("def step(call):\n    return {'phase': 'prefill'}\n")
    (tmp_path / "two.toml").write_text('name = "two"\nroot_classes = ["Two"]\nadapter = "two"\nstages = ["s"]\n'
                                       '[[targets]]\nrole = "step"\npattern = ""\nstep = true\non_enter = "step"\n'
                                       '[[targets]]\nrole = "a"\npattern = "a"\nstage = "s"\n'
                                       '[[targets]]\nrole = "b"\npattern = "b"\nstage = "s"\n')
    return tmp_path / "two.toml"


def test_calls_from_several_threads_nest_per_thread_in_microseconds(tmp_path):
    model, events = Two(), tmp_path / "events.jsonl"
    walls = []

    def session():
        started = time.perf_counter()
        model(torch.ones(2))
        walls.append(time.perf_counter() - started)

    with instrument(model, two_config(tmp_path), events=events):
        threads = [threading.Thread(target=session, name=f"worker-{i}") for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        session()
    assert write_trace(events, tmp_path / "trace.json") == tmp_path / "trace.json"
    doc = json.loads((tmp_path / "trace.json").read_text())
    per_thread = check_trace_event_format(doc)  # the calls overlap in time across threads, never within one
    assert len(per_thread) == 4 and all(len(found) == 3 for found in per_thread.values())
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert sorted(names.values()) == ["MainThread", "worker-0", "worker-1", "worker-2"]
    parents = call_parents(events)
    for found in per_thread.values():
        assert enclosing(found) == {e["args"]["call"]: parents[e["args"]["call"]] for _, _, e in found}
        durations = {e["name"]: e["dur"] for _, _, e in found}
        assert 20_000 <= durations["a"] < max(walls) * 1e6 and durations["Two"] < max(walls) * 1e6


def test_a_stream_without_times_gets_no_trace(v1_sessions, tmp_path):
    from conftest import as_version4

    path = tmp_path / "events.jsonl"
    path.write_bytes(Path(v1_sessions["base"]["path"]).read_bytes())
    assert write_trace(as_version4(path), tmp_path / "trace.json") is None and not (tmp_path / "trace.json").exists()


@needs_transformers5
def test_profile_from_the_command_line(runs):
    """--profile: profile.json holds one label per recorded call, profile.csv their table."""
    from loopmeta.events.labels import PREFIX

    folder, _ = runs["profiled"]
    calls = sum(json.loads((folder / "report.json").read_text())["counts"].values())
    labels = [e for e in json.loads((folder / "profile.json").read_text())["traceEvents"]
              if e.get("cat") == "user_annotation" and e["name"].startswith(PREFIX)]
    assert len(labels) == calls
    rows = (folder / "profile.csv").read_text().splitlines()
    assert rows[0] == "stage,step,calls,total_us" and sum(int(r.split(",")[2]) for r in rows[1:]) == calls
    assert {r.split(",")[1] for r in rows[1:]} == {"0", "1", "2"}


def test_a_cut_stream_gives_the_trace_of_its_finished_calls(v1_sessions, tmp_path):
    path = tmp_path / "events.jsonl"
    lines = Path(v1_sessions["base"]["path"]).read_text().splitlines(keepends=True)
    last_calls = max(i for i, line in enumerate(lines) if '"kind":"calls"' in line)
    rows = json.loads(lines[last_calls])["rows"]
    assert rows[-1][5] == -1  # the step's root call, the last to finish
    cut = json.dumps({"kind": "calls", "rows": rows[:-1]}, separators=(",", ":")) + "\n"
    path.write_text("".join(lines[:last_calls]) + cut)  # what a kill -9 before the last step ended could leave
    kept = read_events(path)
    assert kept.end is None and write_trace(path, tmp_path / "trace.json")
    doc = json.loads((tmp_path / "trace.json").read_text())
    per_thread = check_trace_event_format(doc)
    assert sum(map(len, per_thread.values())) == len(kept.table) == len(v1_sessions["base"]["recorder"].table) - 1
    orphans = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("parent", "") is None]
    assert orphans and all(e["args"]["step"] == rows[-1][1] for e in orphans)
