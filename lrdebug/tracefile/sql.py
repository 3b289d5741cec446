"""A trace as a table of an embedded analytical engine (DuckDB): the cross-rank aggregates run there.

DuckDB reads the parts in parallel and out of core (its memory is capped), so a comparison over a
thousand ranks holds no rank in Python. ``events`` is the one view every query reads: the columns
asked for, cast to the schema's types (a column no part has is null), ``rank`` from ``rank=<r>/``.
Only parts the reader has already opened and whose footer matched the schema are given to DuckDB;
an error while reading (a damaged page) is raised as ``duckdb.Error`` for the caller to fall back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from .schema import SCHEMA

VIEW = "events"
MEMORY_LIMIT = os.environ.get("LRDEBUG_DUCKDB_MEMORY", "1GB")


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    names = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
             pa.float64(): "DOUBLE", pa.float32(): "FLOAT", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN"}
    return names.get(t, "VARCHAR")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect():
    """An in-memory DuckDB connection: at most two threads (the report shares the machine), 1 GB."""
    import duckdb

    return duckdb.connect(config={"threads": max(1, min(2, os.cpu_count() or 1)), "memory_limit": MEMORY_LIMIT,
                                  "enable_external_access": True})


def parquet_view(con, parts: list[tuple[int, Path]], present: set[str], columns: list[str]) -> None:
    """``events`` over the given parts (``present``: the columns some part has)."""
    files = ", ".join(_literal(str(p)) for _, p in parts)
    cols = [f"CAST({quote(c)} AS {_sql_type(SCHEMA.field(c).type)}) AS {quote(c)}" if c in present
            else f"CAST(NULL AS {_sql_type(SCHEMA.field(c).type)}) AS {quote(c)}" for c in columns if c != "rank"]
    if not parts:
        nulls = ", ".join(f"CAST(NULL AS {_sql_type(SCHEMA.field(c).type)}) AS {quote(c)}"
                          for c in columns if c != "rank")
        con.execute(f"CREATE OR REPLACE VIEW {VIEW} AS SELECT CAST(NULL AS INTEGER) AS rank, {nulls} WHERE false")
        return
    con.execute(f"CREATE OR REPLACE VIEW {VIEW} AS SELECT rank, {', '.join(cols)} "
                f"FROM read_parquet([{files}], union_by_name=true, hive_partitioning=true, "
                "hive_types={'rank': 'INTEGER'})")


def table_view(con, table: pa.Table, columns: list[str]) -> None:
    """``events`` over an Arrow table already in memory (a small trace read whole)."""
    present = [c for c in columns if c in table.column_names]
    sub = table.select(present)
    for i, name in enumerate(present):
        if pa.types.is_dictionary(sub.column(name).type):
            sub = sub.set_column(i, name, sub.column(name).cast(sub.column(name).type.value_type))
    con.register("_lrdebug_table", sub)
    cols = [quote(c) if c in present else f"CAST(NULL AS {_sql_type(SCHEMA.field(c).type)}) AS {quote(c)}"
            for c in columns]
    con.execute(f"CREATE OR REPLACE VIEW {VIEW} AS SELECT {', '.join(cols)} FROM _lrdebug_table")
