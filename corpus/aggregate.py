"""The corpus's distributions, queried with DuckDB (embedded, no server) over the store's Parquet files.

Only pages of the corpus with status `ok` count; rows a killed rank left for an unfinished page are ignored (the
page has no `sessions` row). `corpus()` is deterministic: sorted rows, rounded means, no time, path or rank count,
so two runs of the same corpus give the same `corpus.json`. Fields: docs/corpus.md#corpusjson.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import ERROR, OK, STORE_VERSION, files

CORPUS_SCHEMA = "loopmeta.corpus"
HISTOGRAM_MAX = 64  # a bound with more distinct values gets quantiles only
NOT_BOUNDS = ("rank", "seconds", "width", "height")  # numeric session columns that are not loop bounds
_COLUMNS = {  # every view has these columns, typed, whatever the files hold (none, or only errors)
    "sessions": "page VARCHAR, rank BIGINT, status VARCHAR, error VARCHAR, steps BIGINT, prefill_len BIGINT, "
                "generated_tokens BIGINT, decode_steps BIGINT, structure VARCHAR, structure_text VARCHAR",
    "loops": "page VARCHAR, loop VARCHAR, kind VARCHAR, bound BIGINT, axis VARCHAR, role VARCHAR, stage VARCHAR",
    "experts": "page VARCHAR, step BIGINT, phase VARCHAR, layer BIGINT, node VARCHAR, call BIGINT, expert BIGINT, "
               "tokens BIGINT, experts_total BIGINT, top_k BIGINT",
    "calls": "page VARCHAR, rank BIGINT, seq BIGINT, step BIGINT, phase VARCHAR, node VARCHAR, call_index BIGINT, "
             "parent BIGINT, role VARCHAR, stage VARCHAR"}


def connect(out: Path, pages: list[str]) -> Any:
    """A DuckDB connection with the views `sessions` (pages of the corpus), `ok` (those with a result), `loops`,
    `experts` and `calls` (rows of `ok` pages only), over the store's files."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("corpus_arrow", pa.table({"page": pa.array(pages, pa.string())}))
    con.execute("CREATE TABLE corpus_pages AS SELECT page FROM corpus_arrow")
    for table, columns in _COLUMNS.items():
        con.execute(f"CREATE TABLE {table}_columns ({columns})")
        source = f"{table}_columns"
        if files(out, table):
            pattern = str(out / "store" / table / "*.parquet").replace("'", "''")
            source = f"(FROM {source} UNION ALL BY NAME FROM read_parquet('{pattern}', union_by_name = true))"
        keep = "corpus_pages" if table == "sessions" else "ok"
        con.execute(f"CREATE VIEW {table} AS FROM {source} WHERE page IN (SELECT page FROM {keep})")
        if table == "sessions":
            con.execute(f"CREATE VIEW ok AS FROM sessions WHERE status = '{OK}'")
    return con


def _rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def corpus(out: Path, pages: list[str]) -> dict[str, Any]:
    """The aggregates of the corpus `pages` (ids) from the store in `out`."""
    con = connect(out, pages)
    ok = con.execute("SELECT count(*) FROM ok").fetchone()[0]
    return {"schema": CORPUS_SCHEMA, "version": STORE_VERSION, "pages": page_counts(con, pages, ok),
            "loops": loop_bounds(con, ok), "bounds": session_bounds(con), "experts": expert_load(con),
            "k_per_step": k_per_step(con), "structures": structures(con)}


def page_counts(con: Any, pages: list[str], ok: int) -> dict[str, Any]:
    """Pages in the corpus, with a result, with an error (and the error), and without a row (a rank died)."""
    errors = _rows(con, f"SELECT page, error FROM sessions WHERE status = '{ERROR}' ORDER BY page")
    seen = {r[0] for r in con.execute("SELECT page FROM sessions").fetchall()}
    return {"total": len(pages), "with_result": ok, "errors": errors,
            "missing": sorted(set(pages) - seen)}


def loop_bounds(con: Any, ok: int) -> list[dict[str, Any]]:
    """Per loop that repeats on some page (a for, a select, or a parfor of more than one): its bound's
    distribution over the pages with a result; `bound` 0 counts the pages where the loop does not run. A loop that
    is a single call on some pages and a parfor on others is a parfor."""
    loops = _rows(con, """
        SELECT loop, CASE WHEN bool_or(kind = 'parfor') THEN 'parfor' ELSE min(kind) END AS kind,
               any_value(axis) AS axis, any_value(stage) AS stage
        FROM loops GROUP BY loop HAVING bool_or(kind <> 'call') OR max(bound) > 1 ORDER BY loop""")
    counts = _rows(con, "SELECT loop, bound, count(DISTINCT page) AS pages FROM loops GROUP BY loop, bound "
                        "ORDER BY loop, bound")
    out = []
    for loop in loops:
        dist = [{"bound": r["bound"], "pages": r["pages"]} for r in counts if r["loop"] == loop["loop"]]
        absent = ok - sum(d["pages"] for d in dist)
        dist = ([{"bound": 0, "pages": absent}] if absent else []) + dist
        for d in dist:
            d["share"] = round(d["pages"] / ok, 4)
        out.append({**loop, "distribution": dist})
    return out


def session_bounds(con: Any) -> dict[str, dict[str, Any]]:
    """Per numeric bound of the sessions rows: min, quantiles, max and mean over the pages with a result, and a
    histogram (value, pages) when it has few values."""
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE ok)").fetchall())
    names = [n for n, t in types.items() if t in ("BIGINT", "INTEGER", "DOUBLE") and n not in NOT_BOUNDS]
    out = {}
    for name in sorted(names):
        stats = _rows(con, f"""SELECT min("{name}") AS min, quantile_disc("{name}", 0.5) AS p50,
            quantile_disc("{name}", 0.9) AS p90, quantile_disc("{name}", 0.99) AS p99, max("{name}") AS max,
            round(avg("{name}"), 3) AS mean, count("{name}") AS pages FROM ok""")[0]
        if stats["pages"] == 0:
            continue
        histogram = con.execute(f'SELECT "{name}", count(*) FROM ok WHERE "{name}" IS NOT NULL GROUP BY 1 '
                                "ORDER BY 1").fetchall()
        out[name] = {**stats, **({"histogram": [list(h) for h in histogram]}
                                 if len(histogram) <= HISTOGRAM_MAX else {})}
    return out


def expert_load(con: Any) -> dict[str, Any]:
    """Tokens per (layer, expert) over the corpus, and per layer the imbalance: the busiest expert's tokens over
    the mean over all the layer's experts (unused ones counting 0), as the single-page report defines it."""
    load = _rows(con, "SELECT layer, expert, sum(tokens)::BIGINT AS tokens FROM experts GROUP BY layer, expert "
                      "ORDER BY layer, expert")
    layers = _rows(con, """SELECT layer, max(experts_total) AS experts_total, sum(tokens)::BIGINT AS tokens,
        count(DISTINCT expert) AS experts_hit FROM experts GROUP BY layer ORDER BY layer""")
    for layer in layers:
        busiest = max(r["tokens"] for r in load if r["layer"] == layer["layer"])
        layer["imbalance"] = round(busiest / (layer["tokens"] / layer["experts_total"]), 3)
    return {"load": load, "layers": layers,
            "imbalance": max((layer["imbalance"] for layer in layers), default=None)}


def k_per_step(con: Any) -> list[dict[str, Any]]:
    """Per step: the MoE calls over the corpus and the distinct experts each hit (k): min, mean, max."""
    return _rows(con, """SELECT step, any_value(phase) AS phase, count(*) AS calls, min(k) AS k_min,
        round(avg(k), 3) AS k_mean, max(k) AS k_max
        FROM (SELECT page, step, phase, node, call, count(*) AS k FROM experts GROUP BY ALL)
        GROUP BY step ORDER BY step""")


def structures(con: Any) -> list[dict[str, Any]]:
    """Structure classes (nests equal but for their bounds) with their pages, most pages first."""
    return _rows(con, """SELECT structure, count(*) AS pages, min(page) AS example,
        any_value(structure_text) AS text FROM ok GROUP BY structure ORDER BY pages DESC, structure""")
