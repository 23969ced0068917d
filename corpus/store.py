"""The columnar store: one Parquet file per page and table under `<out>/store/<table>/<page key>.parquet`, written
whole or not at all by the rank that ran the page (docs/corpus.md#store).

Tables: `calls` (one row per call), `loops` (one row per loop of the page's nest), `experts` (the MoE ledger, one
row per MoE call and expert hit) and `sessions` (one row per page: its bounds, or its error). A page's `sessions`
file is written last: a page is finished when it has one with status `ok`, so a rank killed mid-page leaves no
half page that counts, and a rerun skips exactly the finished pages. Lane fields become typed columns `lane_<key>`
(int64, double, bool, string, list of int64; anything else JSON text). Every file carries the store version in its
schema metadata. `spec.json` beside the tables holds the session spec of the run that made the store: the options
that change a page's result, and the store version; a rerun with another is refused. pyarrow is imported inside the
functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..common.files import create_once, replacing
from ..errors import SessionError

STORE_VERSION = 1
VERSION_KEY = b"loopmeta.corpus.version"
TABLES = ("calls", "loops", "experts", "sessions")
OK, ERROR = "ok", "error"
SPEC = "spec.json"


def part_path(out: Path, table: str, key: str) -> Path:
    return out / "store" / table / f"{key}.parquet"


def write_part(out: Path, table: str, key: str, columns: dict[str, list[Any]]) -> None:
    """One page's rows of `table` (equal-length columns; a `lane` column of JSON text becomes typed columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = dict(columns)
    if "lane" in columns:
        columns.update(typed_lanes(columns.pop("lane")))
    data = pa.table({k: _array(v) for k, v in columns.items()})
    data = data.replace_schema_metadata({VERSION_KEY: str(STORE_VERSION).encode()})
    path = part_path(out, table, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        pq.write_table(data, tmp)


def _array(values: list[Any]) -> Any:
    import pyarrow as pa

    if all(v is None for v in values):
        return pa.array(values, type=pa.string())  # a column with no value yet: text, so files unify
    return pa.array(values)


def typed_lanes(texts: list[str]) -> dict[str, list[Any]]:
    """Lane JSON texts -> one column per key, `lane_<key>`, typed when every value of the key fits one type."""
    parsed = {t: json.loads(t) for t in set(texts)}
    keys = sorted({k for lane in parsed.values() for k in lane})
    out = {}
    for key in keys:
        values = [parsed[t].get(key) for t in texts]
        out[f"lane_{key}"] = values if _plain(values) else [None if v is None else json.dumps(v, sort_keys=True)
                                                            for v in values]
    return out


def _plain(values: list[Any]) -> bool:
    """True when the values (None aside) are all of one Parquet-typed kind: int, float (ints allowed), bool, str or
    a list of ints."""
    kinds = {_kind(v) for v in values if v is not None}
    return len(kinds) == 1 and None not in kinds or kinds == {"int", "float"}


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, str)):
        return type(value).__name__
    if isinstance(value, list) and all(type(v) is int for v in value):
        return "ints"
    return None


def finished(out: Path) -> dict[str, str]:
    """Page id -> status (`ok` or `error`) of every page with a `sessions` file in the store."""
    import pyarrow.parquet as pq

    found = {}
    for path in sorted((out / "store" / "sessions").glob("*.parquet")):
        row = pq.read_table(path, columns=["page", "status"]).to_pylist()
        if row:
            found[row[0]["page"]] = row[0]["status"]
    return found


def files(out: Path, table: str) -> list[Path]:
    return sorted((out / "store" / table).glob("*.parquet"))


def check_spec(out: Path, spec: dict[str, Any], create: bool = False) -> None:
    """Refuse a store made with another session spec (`spec`: option name -> value as given), or one with pages
    and no spec (made before stores recorded theirs). With `create`, record `spec` in a store without one: when
    ranks race, the first file made wins and the others compare with it."""
    path = out / "store" / SPEC
    spec = json.loads(json.dumps({"store_version": STORE_VERSION, **spec}))
    if files(out, "sessions") and not path.exists():  # pages first: a spec is made before any page
        raise SessionError(f"--out {out} holds a store with no record of the options it was run with (an older "
                           "loopmeta made it): pass another --out")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        if create_once(path, json.dumps(spec, indent=1, sort_keys=True) + "\n"):
            return
    if not path.exists():
        return
    there = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k in sorted(set(there) | set(spec)) if there.get(k) != spec.get(k)]
    if differ:
        shown = "; ".join(f"{_flag(k)} {_shown(there.get(k))} there, {_shown(spec.get(k))} now" for k in differ)
        raise SessionError(f"--out {out} holds pages run with other options ({shown}): rerun with the same options "
                           "to resume it, or pass another --out")


def _flag(key: str) -> str:
    return "store version" if key == "store_version" else "--" + key.replace("_", "-")


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value, sort_keys=True)
