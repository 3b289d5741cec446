"""The trace on disk: complete Parquet parts written off the training thread, and the reader.

Layout of a trace directory::

    <trace>/rank=<r>/part-000000.parquet     complete Parquet files, written atomically (tmp + rename)
    <trace>/rank=<r>/_lrdebug_status.json    run metadata, state (running/closed), completeness, findings
    <trace>/_lrdebug_run.json                 the run id that owns the directory (ranks of one run share it)

The rank is the Hive partition key: the files do not repeat it as a column (pandas and Spark refuse a
column that is also a partition key); readers take it from ``rank=<r>``.

Every part also carries the run metadata as JSON in its schema metadata, so the parts alone describe
the run when a process was killed before writing its status.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .events import COLUMNS, METADATA_KEY, SCHEMA, SCHEMA_MAJOR, SCHEMA_VERSION, STATUS_FILE

# ASCII digits, and ranks that fit an int32: a trace is untrusted input.
# part-000007.parquet, or part-000000-000063.parquet: parts 0..63 merged into one file
_PART_RE = re.compile(r"^part-([0-9]{1,18})(?:-([0-9]{1,18}))?\.parquet$")
MERGE_PARTS = 64  # small parts (one per flush) are merged in groups of this many, so files stay few
MERGE_ROWS = 1 << 20  # ... or of this many rows, so a reader never holds a huge file at once
# Optimizer steps buffered before a part is written (trace()'s default flush_rows): the buffer and
# each write's transient memory grow with it (65,536 held ~+80 MB on scripts/bench_memory.py's loop).
FLUSH_ROWS = 16384
# A part of this many rows or more (a full buffer at the default flush_rows) stays a file of its own:
# merging it would only decode and encode its rows once more (it was a third of a fast loop's writing).
MERGE_BELOW_ROWS = FLUSH_ROWS
_RANK_RE = re.compile(r"^rank=([0-9]{1,9})$")
STATUS_MAX_BYTES = 64 << 20
RUN_FILE = "_lrdebug_run.json"
_RUN_TMP_RE = re.compile(r"^\._lrdebug_run\.json\.[0-9a-f]+\.tmp$")
_DICT_COLUMNS = [f.name for f in SCHEMA if pa.types.is_dictionary(f.type)]
_WRITE_OPTIONS = dict(
    compression="zstd",
    use_dictionary=_DICT_COLUMNS,
    column_encoding={
        "seq": "DELTA_BINARY_PACKED",
        "t_ns": "DELTA_BINARY_PACKED",
        "step": "DELTA_BINARY_PACKED",
        "dur_ns": "DELTA_BINARY_PACKED",
        "lr": "BYTE_STREAM_SPLIT",
    },
)


def torchrun_run_id() -> str | None:
    """An id every rank of one torchrun launch derives alike from its environment, without talking."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_PORT" in os.environ:
        return "torchrun-{}-{}-{}".format(os.environ["TORCHELASTIC_RUN_ID"], os.environ.get("MASTER_ADDR", ""),
                                          os.environ["MASTER_PORT"])
    return None


class TraceError(Exception):
    """Unusable trace input; the CLI prints it as one line and exits 2."""


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


def table_from_columns(columns: dict[str, Any], n: int, metadata: dict[str, Any]) -> pa.Table:
    """Build a table of SCHEMA from a dict of column -> list/array; missing columns are null."""
    arrays = []
    for f in SCHEMA:
        values = columns.get(f.name)
        if values is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(values, (pa.Array, pa.ChunkedArray)):
            arrays.append(values if values.type == f.type else values.cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    meta = {METADATA_KEY: json.dumps(metadata, default=str).encode()}
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(meta))


def _release_memory() -> None:
    """Give the memory of the buffers just written back to the system.

    pyarrow's default allocator (mimalloc in recent wheels) keeps what it freed for reuse: without
    this, each flush and each part read back by a merge leaves ~8-10 MB resident (a merge of six
    parts: +50 MB; scripts/bench_memory.py).
    """
    pa.default_memory_pool().release_unused()


class PartWriter:
    """Writes the rows of one process as Parquet parts under ``<root>/rank=<r>/``.

    A background thread calls ``drain()`` (which returns a column dict and row count, or None) every
    ``interval_s`` seconds, or at once after ``wake()``; pyarrow encodes without the GIL, so the
    training thread only pays for appending rows. Any failure is reported once through ``on_error``
    and ends writing; the training never sees an exception from here.
    """

    def __init__(
        self,
        root: Path,
        drain: Callable[[], tuple[dict[str, Any], int] | None],
        metadata: Callable[[], dict[str, Any]],
        rank: Callable[[], int],
        run_id: str,
        on_error: Callable[[str], None],
        interval_s: float = 5.0,
    ):
        self.root = Path(root)
        self._drain = drain
        self._metadata = metadata
        self._rank = rank
        self.run_id = run_id
        self._on_error = on_error
        self.interval_s = interval_s
        self.rank_dir: Path | None = None
        self.parts = 0
        self._small: list[tuple[Path, int]] = []  # single parts not merged yet, with their rows
        self.merge_parts = True
        self.rows = 0
        self.failed: str | None = None
        self.keep_empty = True  # False: a process that wrote no row leaves no partition at all
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="lrdebug-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop:
                break
            self.flush()

    def flush(self) -> None:
        """Drain the buffer and write it as one part (no-op once failed or in a forked child)."""
        with self._lock:
            if self.failed or os.getpid() != self._pid:
                return
            try:
                got = self._drain()
                if got is None:
                    return
                columns, n = got
                self._write_part(columns, n)
                del columns, got
                _release_memory()
            except Exception as exc:  # noqa: BLE001 - never let the writer take training down
                self._fail(f"{type(exc).__name__}: {exc}")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._on_error(reason)

    def _ensure_rank_dir(self) -> Path:
        if self.rank_dir is None:
            rank_dir = self.root / f"rank={self._rank()}"
            claim_rank_dir(rank_dir, self.run_id)
            self.rank_dir = rank_dir
            self._write_status(state="running", complete=False, reason="the process has not closed the trace")
        return self.rank_dir

    def _write_part(self, columns: dict[str, Any], n: int) -> None:
        rank_dir = self._ensure_rank_dir()
        table = table_from_columns(columns, n, self._metadata())
        name = f"part-{self.parts:06d}.parquet"
        tmp = rank_dir / f".{name}.tmp"
        pq.write_table(table.drop_columns(["rank"]), tmp, **_WRITE_OPTIONS)
        os.replace(tmp, rank_dir / name)
        self.parts += 1
        self.rows += n
        if not self.merge_parts:
            return
        if n >= MERGE_BELOW_ROWS:
            self._merge_small_parts()  # the small parts before this one, so merged ranges stay contiguous
            return
        self._small.append((rank_dir / name, n))
        if len(self._small) >= MERGE_PARTS or sum(rows for _, rows in self._small) >= MERGE_ROWS:
            self._merge_small_parts()

    def _merge_small_parts(self) -> None:
        """Rewrite the small parts as one file, then delete them; readers skip parts a merged file
        covers, so a crash between the two steps duplicates nothing, and a failure only leaves them."""
        small, self._small = [path for path, _ in self._small], []
        if len(small) < 2:
            return
        first, last = (int(_PART_RE.match(p.name).group(1)) for p in (small[0], small[-1]))
        name = f"part-{first:06d}-{last:06d}.parquet"
        tmp = small[0].parent / f".{name}.tmp"
        try:
            schema = pq.read_schema(small[-1])  # the last part's metadata has the fullest object registry
            with pq.ParquetWriter(tmp, schema, **_WRITE_OPTIONS) as writer:
                for part in small:
                    # Not pq.read_table: it imports pyarrow.dataset and reads on a thread pool, whose
                    # per-thread allocator heaps stay resident (+20 MB in a training process).
                    with pq.ParquetFile(part) as f:
                        table = f.read(use_threads=False)
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
                    del table
                    _release_memory()
            os.replace(tmp, small[0].parent / name)
            _release_memory()
        except Exception:  # noqa: BLE001 - the small parts are still there and complete
            tmp.unlink(missing_ok=True)
            return
        for part in small:
            part.unlink(missing_ok=True)

    def _write_status(self, **fields: Any) -> None:
        status = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "parts": self.parts,
            "rows": self.rows,
            "meta": self._metadata(),
        }
        status.update(fields)
        write_json_atomic(self._ensure_rank_dir() / STATUS_FILE, status)

    def close(self, reason: str | None, findings: list[dict[str, Any]]) -> None:
        """Stop the thread, write what is left and the closing status. Never raises."""
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        if os.getpid() != self._pid:
            return
        self.flush()
        with self._lock:
            if self.rank_dir is None and (self.failed or not self.keep_empty):
                return
            incomplete = self.failed or reason
            if not self.failed:
                self._merge_small_parts()
            try:
                self._write_status(
                    state="closed",
                    complete=not incomplete,
                    reason=incomplete,
                    end_unix_ns=time.time_ns(),
                    findings=findings,
                )
            except Exception as exc:  # noqa: BLE001
                if not self.failed:
                    self._fail(f"{type(exc).__name__}: {exc}")


def claim_rank_dir(rank_dir: Path, run_id: str) -> None:
    """Create ``rank=<r>/`` for this run; refuse one that exists (never overwrite a trace)."""
    root = rank_dir.parent
    claim_root(root, run_id)
    for other in root.iterdir():
        if not _RANK_RE.match(other.name):
            continue
        status = read_status(other)
        if status is not None and status.get("run_id") not in (None, run_id):
            raise TraceError(f"{root} holds a trace of another run; choose another output directory")
    try:
        rank_dir.mkdir()
    except FileExistsError:
        raise TraceError(f"{rank_dir} already exists; an existing trace is never overwritten") from None


def claim_root(root: Path, run_id: str) -> None:
    """Mark ``root`` as this run's trace before any rank directory is made in it.

    The marker appears with its content in one step (a hard link to a complete file), so ranks that
    start together see either no marker or the first rank's; a marker of another run is refused.
    """
    root.mkdir(parents=True, exist_ok=True)
    marker = root / RUN_FILE
    if not marker.exists():
        import uuid

        tmp = root / f".{RUN_FILE}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"run_id": run_id, "schema_version": SCHEMA_VERSION}))
        try:
            os.link(tmp, marker)
        except FileExistsError:
            pass  # another rank of this run (or another run) got there first: checked below
        except OSError:  # a filesystem without hard links
            if not marker.exists():
                os.replace(tmp, marker)
        finally:
            tmp.unlink(missing_ok=True)
    if read_run_id(root) != run_id:
        raise TraceError(f"{root} holds a trace of another run; choose another output directory "
                         "(ranks of one job started without torchrun must share LRDEBUG_RUN_ID)")


def read_run_id(root: Path) -> str | None:
    """The run id in ``root``'s marker, or None when missing or unreadable."""
    try:
        data = json.loads((Path(root) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data.get("run_id") if isinstance(data, dict) else None


def check_output_dir(root: Path, run_id: str, rank: int | None = None) -> None:
    """Refuse, before training starts, an output directory that holds anything but this run's other
    ranks (a rank written twice would be an earlier trace overwritten)."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise TraceError(f"{root} exists and is not a directory; choose another output directory (--out)")
    has_marker = (root / RUN_FILE).exists()
    ours = has_marker and read_run_id(root) == run_id
    if has_marker and not ours:
        raise TraceError(f"{root} holds a trace of another run; choose another output directory (--out)")
    for entry in root.iterdir():
        if (ours and entry.name == RUN_FILE) or _RUN_TMP_RE.match(entry.name):
            continue  # this run's marker, or another rank of this run writing it now
        is_rank = _RANK_RE.match(entry.name) is not None
        status = read_status(entry) if is_rank else None
        # A rank directory of this run may have no status yet: its rank is starting right now.
        same_run = is_rank and (ours or (status is not None and status.get("run_id") == run_id))
        if not same_run or entry.name == f"rank={rank}":
            raise TraceError(
                f"{root} already exists and is not empty; an existing trace is never overwritten: "
                "choose another output directory (--out)"
            )


def read_status(rank_dir: Path) -> dict[str, Any] | None:
    """The status JSON of one rank, or None when missing or unreadable (not a regular file, too big,
    not JSON, nested too deep)."""
    path = rank_dir / STATUS_FILE
    try:
        if not path.is_file():  # a FIFO would block, /dev/zero would never end
            return None
        with open(path, "rb") as f:
            raw = f.read(STATUS_MAX_BYTES + 1)
        if len(raw) > STATUS_MAX_BYTES:
            return None
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------- reader


@dataclass
class Trace:
    """A trace read from disk: the rows, and per-rank metadata and state."""

    path: Path
    table: pa.Table
    meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    status: dict[int, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> list[int]:
        return sorted(set(self.meta) | set(self.status))

    def to_pandas(self):
        """Integer columns stay integers (nullable), strings become categoricals."""
        import pandas as pd

        nullable = {pa.int8(): pd.Int8Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
        return self.table.to_pandas(types_mapper=nullable.get)


def _check_version(version: Any, where: Path) -> None:
    """Refuse a newer major version (TraceError); an unreadable one is damage (ValueError)."""
    text = str(version)[:20]
    try:
        major = int(text.split(".")[0])
    except ValueError:
        raise ValueError(f"unreadable schema version {text!r}") from None
    if major > SCHEMA_MAJOR:
        raise TraceError(
            f"{where}: trace schema version {text} is newer than this lrdebug reads "
            f"({SCHEMA_VERSION}); upgrade lrdebug"
        )


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


def find_parts(root: Path) -> list[tuple[int, int, Path]]:
    parts = []
    for rank_dir in root.iterdir():
        m = _RANK_RE.match(rank_dir.name)
        if not m or not rank_dir.is_dir():
            continue
        found = []
        for f in rank_dir.iterdir():
            pm = _PART_RE.match(f.name)
            if pm and f.is_file():  # a FIFO or a device named like a part would block or never end
                first = int(pm.group(1))
                found.append((first, int(pm.group(2)) if pm.group(2) else None, f))
        merged = [(a, b) for a, b, _ in found if b is not None]
        for first, last, f in found:
            if last is None and any(a <= first <= b for a, b in merged):
                continue  # also in a merged part (the process ended before deleting it)
            parts.append((int(m.group(1)), first, f))
    return sorted(parts)


def read_trace(path: str | os.PathLike, columns: list[str] | None = None) -> Trace:
    """Read a trace directory; corrupt parts are skipped and named in ``Trace.skipped``."""
    root = Path(path)
    if not root.exists():
        raise TraceError(f"{root}: no such trace")
    if not root.is_dir():
        raise TraceError(f"{root}: not a trace (expected a directory with rank=<r>/ partitions)")
    try:
        parts = find_parts(root)
        rank_dirs = [d for d in root.iterdir() if _RANK_RE.match(d.name) and d.is_dir()]
    except OSError as exc:
        raise TraceError(f"{root}: cannot read: {exc.strerror or exc}") from None
    if not rank_dirs:
        if not any(root.iterdir()):
            raise TraceError(f"{root}: empty directory, not a trace")
        raise TraceError(f"{root}: not an lrdebug trace (no rank=<r>/ partitions)")
    wanted = list(COLUMNS) if columns is None else [c for c in COLUMNS if c in columns]
    trace = Trace(path=root, table=pa.Table.from_arrays([], schema=pa.schema([])))
    for rank_dir in rank_dirs:
        status = read_status(rank_dir)
        if status is not None:
            try:
                _check_version(status.get("schema_version", "1.0"), rank_dir / STATUS_FILE)
            except ValueError:
                continue  # a damaged status: the parts still describe the run
            rank = int(_RANK_RE.match(rank_dir.name).group(1))
            trace.status[rank] = status
            if isinstance(status.get("meta"), dict):
                trace.meta[rank] = status["meta"] = clean_meta(status["meta"])
    tables = []
    for rank, _, part in parts:
        try:
            pf = pq.ParquetFile(part)
            meta = _part_meta(pf.schema_arrow)
            _check_version(meta.get("schema_version", "1.0"), part)
        except TraceError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable part is skipped and named
            trace.skipped.append(f"{part.relative_to(root)} ({_short(exc)})")
            continue
        try:
            present = [c for c in wanted if c in pf.schema_arrow.names]
            table = _conform(pf.read(columns=present), wanted, rank)
        except Exception as exc:  # noqa: BLE001
            trace.skipped.append(f"{part.relative_to(root)} ({_short(exc)})")
            continue
        tables.append(table)
        if rank not in trace.status or "meta" not in trace.status[rank]:
            trace.meta[rank] = meta  # later parts carry the fuller object registry
    if tables:
        trace.table = pa.concat_tables(tables)
    else:
        trace.table = pa.schema([SCHEMA.field(c) for c in wanted]).empty_table()
    if "rank" in wanted and "seq" in wanted and trace.table.num_rows:
        trace.table = trace.table.sort_by([("rank", "ascending"), ("seq", "ascending")])
    return trace


def _short(exc: Exception) -> str:
    """One printable line: a message may quote bytes of the trace (escape sequences included)."""
    text = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:200])


def load(path: str | os.PathLike, columns: list[str] | None = None):
    """All events of a trace, every rank, as a pandas DataFrame ordered by rank and seq."""
    trace = read_trace(path, columns)
    for note in trace.skipped:
        print(f"lrdebug: skipped unreadable part {note}", file=sys.stderr)
    try:
        return trace.to_pandas()
    except (pa.ArrowException, ValueError) as exc:  # parts are validated; this is the last line of defence
        raise TraceError(f"{trace.path}: unreadable trace ({_short(exc)})") from None
