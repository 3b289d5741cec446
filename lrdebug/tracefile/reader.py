"""Reading a trace: every readable part of every rank, conformed to the current schema.

A trace is untrusted input: nothing is unpickled or evaluated, a damaged part is skipped with a note,
a newer major schema version is refused with a clear message (TraceError).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import (
    COLUMNS,
    METADATA_KEY,
    PART_RE,
    RANK_RE,
    SCHEMA,
    STATUS_FILE,
    TraceError,
    check_version,
    read_status,
)


@dataclass
class Trace:
    """A trace read from disk: the rows, and per-rank metadata and state."""

    path: Path
    table: pa.Table
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    status: dict[int, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    parts: list[tuple[int, Path]] = field(default_factory=list)  # readable parts (footer and metadata)
    present: set[str] = field(default_factory=set)  # columns some readable part has
    rows: int = 0  # rows of the readable parts (their footers)
    uniform: bool = True
    selected: list[int] | None = None  # the ranks asked for (None: every rank)  # every readable part's columns have the schema's types (queried as they are)

    @property
    def ranks(self) -> list[int]:
        return sorted(set(self.meta) | set(self.status))

    def to_pandas(self):
        """Integer columns stay integers (nullable), strings become categoricals."""
        import pandas as pd

        nullable = {pa.int8(): pd.Int8Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
        return self.table.to_pandas(types_mapper=nullable.get)



def _part_meta(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("no lrdebug metadata")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("lrdebug metadata is not an object")
    return clean_meta(meta)


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The object registry in the shape readers index into: ``optimizers`` and ``schedulers`` lists
    of objects, each optimizer's ``groups`` a list of objects (damaged entries become ``{}``)."""
    meta = dict(meta)
    for key in ("optimizers", "schedulers"):
        items = meta.get(key)
        items = [dict(x) if isinstance(x, dict) else {} for x in items] if isinstance(items, list) else []
        for item in items:
            groups = item.get("groups")
            if groups is not None:
                item["groups"] = [g if isinstance(g, dict) else {} for g in groups] if isinstance(groups, list) else []
        meta[key] = items
    return meta


_INDEX_COLUMNS = ("rank", "optimizer", "scheduler", "group", "parent", "loader")


def conform(table: pa.Table) -> pa.Table:
    """The columns of a part that the schema knows, cast to the schema's types and fully validated
    (UTF-8, offsets, dictionary indices), so that readers can trust every buffer. Raises on a column
    that cannot be cast or on damaged data."""
    names = [n for n in table.column_names if n in SCHEMA.names]
    if len(set(names)) != len(names):
        raise ValueError("duplicate columns")
    arrays = []
    for name in names:
        col, typ = table.column(name), SCHEMA.field(name).type
        arrays.append(col if col.type == typ else col.cast(typ))
    out = pa.Table.from_arrays(arrays, schema=pa.schema([SCHEMA.field(n) for n in names]))
    out.validate(full=True)
    import pyarrow.compute as pc  # here: its import costs a report that reads only footers 0.15 s

    for name in _INDEX_COLUMNS:  # readers index lists with these
        if name in names and out.num_rows and (pc.min(out.column(name)).as_py() or 0) < 0:
            raise ValueError(f"negative {name} index")
    return out


def _conform(table: pa.Table, columns: list[str], rank: int) -> pa.Table:
    """Cast a part to the current schema's columns: missing ones become null, others are dropped;
    ``rank`` comes from the partition directory."""
    table = conform(table)
    arrays = []
    for name in columns:
        f = SCHEMA.field(name)
        if name in table.column_names:
            arrays.append(table.column(name))
        elif name == "rank":
            arrays.append(pa.repeat(pa.scalar(rank, f.type), table.num_rows))
        else:
            arrays.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([SCHEMA.field(c) for c in columns]))


def parse_ranks(spec) -> list[int] | None:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``; an int or an iterable of ints as they are; None: every rank.
    Raises ValueError with a one-line message for anything else."""
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, str):
        out: set[int] = set()
        for item in spec.split(","):
            item = item.strip()
            lo, dash, hi = item.partition("-")
            if not lo.isdigit() or (dash and not hi.isdigit()) or len(lo) > 9 or len(hi) > 9:
                raise ValueError(f"bad rank {item!r} in {spec!r} (expected R, A-B or a list like 0-3,8)")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a:
                raise ValueError(f"bad rank range {item!r} (the end is below the start)")
            if b - a > 1_000_000:
                raise ValueError(f"rank range {item!r} is too large")
            out.update(range(a, b + 1))
        return sorted(out)
    try:
        ranks = sorted({int(r) for r in spec})
    except (TypeError, ValueError):
        raise ValueError(f"ranks must be integers, a range or a list like 0-3,8, not {spec!r}") from None
    if any(r < 0 for r in ranks):
        raise ValueError("ranks are not negative")
    return ranks


def rank_dirs(root: Path, ranks=None) -> list[tuple[int, Path]]:
    """``(rank, rank=<r>/)`` of a trace, only those of ``ranks`` when given (others are not listed)."""
    if ranks is not None:
        return [(r, root / f"rank={r}") for r in ranks if (root / f"rank={r}").is_dir()]
    out = []
    for d in root.iterdir():
        m = RANK_RE.match(d.name)
        if m and d.is_dir():
            out.append((int(m.group(1)), d))
    return sorted(out)


def find_parts(root: Path, ranks=None) -> list[tuple[int, int, Path]]:
    parts = []
    for rank, rank_dir in rank_dirs(root, ranks):
        found = []
        for f in rank_dir.iterdir():
            pm = PART_RE.match(f.name)
            if pm and f.is_file():  # a FIFO or a device named like a part would block or never end
                first = int(pm.group(1))
                found.append((first, int(pm.group(2)) if pm.group(2) else None, f))
        merged = [(a, b) for a, b, _ in found if b is not None]
        for first, last, f in found:
            end = first if last is None else last
            if any(a <= first and end <= b and (a, b) != (first, last) for a, b in merged):
                continue  # also in a (larger) merged part: the process ended before deleting it
            parts.append((rank, first, f))
    return sorted(parts)


def _uniform(schema: pa.Schema, table: pa.Table | None = None) -> bool:
    """The part's columns (those the schema knows) have the schema's types, dictionaries aside."""
    def plain(t: pa.DataType) -> pa.DataType:
        return t.value_type if pa.types.is_dictionary(t) else t

    return all(plain(f.type) == plain(SCHEMA.field(f.name).type) for f in schema if f.name in SCHEMA.names)


READ_ATTEMPTS = 4  # readings of a trace whose writer is merging parts as it is read


def read_trace(path: str | os.PathLike, columns: list[str] | None = None, ranks=None, on_part=None) -> Trace:
    """Read a trace directory; corrupt parts are skipped and named in ``Trace.skipped``.

    ``on_part(rank, path, footer)`` is called for each readable part in order (rank, then part), with
    its ``pyarrow.parquet.FileMetaData``: what a caller wants of the footers, without holding them all.
    ``on_part(None, None, None)``: forget the parts seen so far, they come again. A trace still being
    written (the summary at the end of a job, a report during a run) can lose listed parts to its
    writer's merges before they are opened; the read then starts over from a fresh listing.

    ``ranks`` (an int, a list, or a spec like ``"0-3,8"``): only those partitions are listed and read.
    """
    root = Path(path)
    if not root.exists():
        raise TraceError(f"{root}: no such trace")
    if not root.is_dir():
        raise TraceError(f"{root}: not a trace (expected a directory with rank=<r>/ partitions)")
    try:
        wanted_ranks = parse_ranks(ranks)
        all_dirs = [d for _, d in rank_dirs(root)]
        dirs = all_dirs if wanted_ranks is None else [d for _, d in rank_dirs(root, wanted_ranks)]
        parts = find_parts(root, wanted_ranks)
    except OSError as exc:
        raise TraceError(f"{root}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TraceError(str(exc)) from None
    if not all_dirs:
        if not any(root.iterdir()):
            raise TraceError(f"{root}: empty directory, not a trace")
        raise TraceError(f"{root}: not an lrdebug trace (no rank=<r>/ partitions)")
    wanted = list(COLUMNS) if columns is None else [c for c in COLUMNS if c in columns]
    trace = Trace(path=root, table=pa.Table.from_arrays([], schema=pa.schema([])), selected=wanted_ranks)
    if wanted_ranks is not None and not dirs:
        have = sorted(int(RANK_RE.match(d.name).group(1)) for d in all_dirs)
        raise TraceError(f"{root}: no rank {rank_spans(wanted_ranks)} in this trace (it has ranks {rank_spans(have)})")
    for rank_dir in dirs:
        status = read_status(rank_dir)
        if status is not None:
            try:
                check_version(status.get("schema_version", "1.0"), rank_dir / STATUS_FILE)
            except ValueError:
                continue  # a damaged status: the parts still describe the run
            rank = int(RANK_RE.match(rank_dir.name).group(1))
            trace.status[rank] = status
            if isinstance(status.get("meta"), dict):
                trace.meta[rank] = status["meta"] = clean_meta(status["meta"])
    for attempt in range(READ_ATTEMPTS):
        try:
            tables = _read_parts(root, parts, wanted, trace, on_part, last=attempt == READ_ATTEMPTS - 1)
            break
        except _PartVanished:
            # A live writer merged parts after they were listed (the merged part holds their rows):
            # read again from a fresh listing rather than report a rank without them.
            trace.parts, trace.skipped, trace.rows = [], [], 0
            if on_part is not None:
                on_part(None, None, None)
            parts = find_parts(root, wanted_ranks)
    if tables:
        trace.table = pa.concat_tables(tables)
    else:
        trace.table = pa.schema([SCHEMA.field(c) for c in wanted]).empty_table()
    if "rank" in wanted and "seq" in wanted and trace.table.num_rows:
        trace.table = trace.table.sort_by([("rank", "ascending"), ("seq", "ascending")])
    return trace


class _PartVanished(Exception):
    """A listed part was gone when it was opened."""


def _read_parts(root: Path, parts, wanted: list[str], trace: Trace, on_part, last: bool) -> list[pa.Table]:
    """The listed parts' tables (those with ``wanted`` columns), the footers noted in ``trace``.
    Raises ``_PartVanished`` for a part deleted since it was listed, unless this is the ``last`` try."""
    tables = []
    seen: set[tuple] = set()
    for (rank, _, part), opened in zip(parts, _open_ahead([p for _, _, p in parts])):
        try:
            if isinstance(opened, Exception):
                raise opened
            pf, schema = opened
            meta = _part_meta(schema)
            check_version(meta.get("schema_version", "1.0"), part)
        except TraceError:
            raise
        except FileNotFoundError:
            if not last:
                raise _PartVanished(part) from None
            trace.skipped.append(f"{part.relative_to(root)} (deleted while the trace was read)")
            continue
        except Exception as exc:  # noqa: BLE001 - any unreadable part is skipped and named
            trace.skipped.append(f"{part.relative_to(root)} ({short_error(exc)})")
            continue
        trace.parts.append((rank, part))
        if on_part is not None:
            on_part(rank, part, pf.metadata)
        trace.rows += pf.metadata.num_rows
        fields = tuple(zip(schema.names, schema.types))
        if fields not in seen:  # parts of one run share their columns: checked once
            seen.add(fields)
            trace.present.update(n for n in schema.names if n in SCHEMA.names)
            trace.uniform = trace.uniform and _uniform(schema)
        if not wanted:
            if rank not in trace.status or "meta" not in trace.status[rank]:
                trace.meta[rank] = meta
            continue
        try:
            present = [c for c in wanted if c in schema.names]
            table = _conform(pf.read(columns=present), wanted, rank)
        except Exception as exc:  # noqa: BLE001
            trace.skipped.append(f"{part.relative_to(root)} ({short_error(exc)})")
            continue
        tables.append(table)
        if rank not in trace.status or "meta" not in trace.status[rank]:
            trace.meta[rank] = meta  # later parts carry the fuller object registry
    return tables


def _open_ahead(paths: list[Path], ahead: int = 8):
    """Each part opened (its footer parsed: pyarrow releases the GIL) by two threads a few parts ahead
    of the caller, as ``(ParquetFile, Arrow schema)`` or the exception; few files are open at once."""
    from concurrent.futures import ThreadPoolExecutor

    def open_one(path):
        try:
            pf = pq.ParquetFile(path)
            return pf, pf.schema_arrow
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which skips the part
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = [pool.submit(open_one, p) for p in paths[:ahead]]
        for i in range(len(paths)):
            if i + ahead < len(paths):
                pending.append(pool.submit(open_one, paths[i + ahead]))
            yield pending[i].result()
            pending[i] = None


def rank_spans(ranks, sep: str = ",") -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: readable also for a thousand ranks ("none" for no rank)."""
    ranks = sorted(set(int(r) for r in ranks))
    spans, i = [], 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        spans.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return sep.join(spans) or "none"


def short_error(exc: Exception) -> str:
    """One printable line: a message may quote bytes of the trace (escape sequences included)."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:200])


def load(path: str | os.PathLike, columns: list[str] | None = None, ranks=None):
    """The events of a trace as a pandas DataFrame ordered by rank and seq: every rank, or only
    ``ranks`` (an int, a list, or ``"0-3,8"``), whose partitions alone are opened; ``columns``: only
    those columns are read."""
    trace = read_trace(path, columns, ranks=ranks)
    for note in trace.skipped:
        print(f"lrdebug: skipped unreadable part {note}", file=sys.stderr)
    try:
        return trace.to_pandas()
    except (pa.ArrowException, ValueError) as exc:  # parts are validated; this is the last line of defence
        raise TraceError(f"{trace.path}: unreadable trace ({short_error(exc)})") from None
