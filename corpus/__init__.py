"""A corpus of pages: one events-only session per page, sharded over ranks, stored as Parquet and summarised
with DuckDB (docs/corpus.md)."""
