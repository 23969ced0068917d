"""The report's step lines (`report.notation.step_runs`): folded lines, unfolded again by the test's own parser,
give back every step's lane exactly, and no two neighbouring lines could have been one."""

from __future__ import annotations

import re

from loopmeta.report.notation import fmt_lane, step_runs


def unfold(steps_text: str, phase: str, lane_text: str) -> list[str]:
    """`fmt_lane` text of each step a line stands for: `a..b` ranges count up by one per step."""
    lo, _, hi = steps_text.partition("..")
    n = int(hi or lo) - int(lo) + 1
    out = []
    for i in range(n):
        parts = []
        for item in lane_text.split(" ") if lane_text else []:
            key, value = item.split("=", 1)
            m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", value)
            if m:
                assert int(m[2]) - int(m[1]) == n - 1, (steps_text, item)
                value = str(int(m[1]) + i)
            parts.append(f"{key}={value}")
        out.append((int(lo) + i, phase, " ".join(parts)))
    return out


def test_folded_lines_unfold_to_every_step():
    steps = [{"step": 0, "phase": "prefill", "batch": 2, "seq_len": 900, "past_len": 0, "kv_len": 900,
              "images": [{"crops": 6}]}]
    steps += [{"step": i, "phase": "decode", "batch": 2, "seq_len": 1, "past_len": 899 + i, "kv_len": 900 + i}
              for i in range(1, 40)]
    steps += [{"step": 40, "phase": "decode", "batch": 2, "seq_len": 1, "past_len": 939, "kv_len": 940, "x": 1.0},
              {"step": 41, "phase": "decode", "batch": 2, "seq_len": 1, "past_len": 940, "kv_len": 940, "x": 1.0},
              {"step": 42, "phase": "decode", "batch": 2, "seq_len": 1, "past_len": 941, "kv_len": 941, "x": True},
              {"step": 44, "phase": "decode", "batch": 2, "seq_len": 1, "past_len": 942, "kv_len": 942, "x": True},
              {"step": 45, "phase": "prefill", "batch": 2, "seq_len": 1, "past_len": 943, "kv_len": 943, "x": True}]
    lines = step_runs(steps)
    assert [line.steps for line in lines] == ["0", "1..39", "40..41", "42", "44", "45"]
    assert [line.counts for line in lines] == [False, True, True, False, False, False]
    assert [u for line in lines for u in unfold(*line[:3])] == [(s["step"], s["phase"], fmt_lane(s)) for s in steps]


def test_a_key_that_stops_counting_or_changes_ends_the_line():
    base = {"phase": "decode", "seq_len": 1}
    steps = [{**base, "step": 1, "past_len": 5}, {**base, "step": 2, "past_len": 6}, {**base, "step": 3, "past_len": 6},
             {**base, "step": 4, "past_len": 6}, {**base, "step": 5, "past_len": 8}, {**base, "step": 6, "seq_len": 1}]
    assert step_runs(steps) == [("1..2", "decode", "seq_len=1 past_len=5..6", True),
                                ("3..4", "decode", "seq_len=1 past_len=6", False),
                                ("5", "decode", "seq_len=1 past_len=8", False), ("6", "decode", "seq_len=1", False)]
