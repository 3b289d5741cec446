"""Writing a trace: complete Parquet parts written off the training thread, merged as the run goes,
and the per-rank status file. Claims the output directory so an existing trace is never overwritten.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import (
    METADATA_KEY,
    PART_RE,
    RANK_RE,
    RUN_FILE,
    RUN_TMP_RE,
    SCHEMA,
    SCHEMA_VERSION,
    STATUS_FILE,
    TraceError,
    read_status,
    write_json_atomic,
)
from .summary import SUMMARY_KEY, merge_summaries, summarize

MERGE_PARTS = 64  # small parts (one per flush) are merged in groups of this many, so files stay few
MERGE_MERGED = 16  # ... and merged files still smaller than a full part, in groups of this many
# Seconds between time-based parts (trace()'s default flush_seconds): a process killed without
# warning (SIGKILL, os._exit, a segfault, the OOM killer) loses at most about this much.
FLUSH_SECONDS = 1.0
MERGE_ROWS = 1 << 20  # ... or of this many rows, so a reader never holds a huge file at once
# Optimizer steps buffered before a part is written (trace()'s default flush_rows): the buffer and
# each write's transient memory grow with it (65,536 held ~+80 MB on scripts/bench_memory.py's loop).
FLUSH_ROWS = 16384
# A part of this many rows or more (a full buffer at the default flush_rows) stays a file of its own:
# merging it would only decode and encode its rows once more (it was a third of a fast loop's writing).
MERGE_BELOW_ROWS = FLUSH_ROWS
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


def _add_summary(writer: pq.ParquetWriter, make: Callable[[], bytes]) -> None:
    """Store the part's summary in its footer (``tracefile.summary``): a report of the closed trace reads
    it instead of the rows. Without one (a failure here, an older trace) the rows are read."""
    try:
        writer.add_key_value_metadata({SUMMARY_KEY: make()})
    except Exception:  # noqa: BLE001 - only a shortcut for readers
        pass


def _release_memory() -> None:
    """Give the memory of the buffers just written back to the system.

    pyarrow's default allocator (mimalloc in recent wheels) keeps what it freed for reuse: without
    this, each flush and each part read back by a merge leaves ~8-10 MB resident (a merge of six
    parts: +50 MB; scripts/bench_memory.py).
    """
    pa.default_memory_pool().release_unused()


_warmed = False


def _warm_up() -> None:
    """Pay, in the writer thread as recording starts, the one-off costs of the first part: pyarrow
    imports pandas lazily on its first ``pa.array`` (~0.35 s), and the Parquet writer and zstd set up
    on first use. Otherwise a run that fails in its first second pays them in its final save, when
    a signal (torchrun tearing the job down) may be only milliseconds away."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    try:
        table = table_from_columns({"seq": [0]}, 1, {})
        pq.write_table(table, pa.BufferOutputStream(), **_WRITE_OPTIONS)
        json.dumps({"warm": [1, 2.0, None]}, default=str)
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


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
        interval_s: float = FLUSH_SECONDS,
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
        self._merged: list[tuple[Path, int]] = []  # merged files of fewer rows than a full part
        self.merge_parts = True
        self.rows = 0
        self.failed: str | None = None
        self.keep_empty = True  # False: a process that wrote no row leaves no partition at all
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._ramp = 0  # parts written by the loop since the start or the first optimizer step
        self._full = False  # the last wake() came from a full buffer
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="lrdebug-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self, first: bool = False) -> None:
        """Write a part now. ``first``: the first optimizer step was just recorded; the early cadence
        (see ``_loop``) starts over from it."""
        if first:
            self._ramp = 0
        self._full = not first
        self._wake.set()

    def _loop(self) -> None:
        # A part every interval_s counted from the start of the previous one (not its end), so that
        # what a killed process loses stays within about interval_s plus one write. The first parts
        # come sooner (interval_s/16, /8, /4, /2 after the previous one): a run that dies in its first
        # second (a rank torchrun tears down at once) still leaves its first steps. The recorder wakes
        # the writer at the first optimizer step, which starts that ramp over.
        due = time.monotonic() + self._interval()
        _warm_up()
        while not self._stop:
            full = self._wake.wait(max(0.0, due - time.monotonic())) and self._full
            self._wake.clear()
            self._full = False
            if self._stop:
                break
            started = time.monotonic()
            self.flush(full=full)
            self._ramp += 1
            due = started + self._interval()

    def _interval(self) -> float:
        return self.interval_s / 16 * 2 ** min(self._ramp, 4)

    def flush(self, full: bool = False) -> None:
        """Drain the buffer and write it as one part (no-op once failed or in a forked child).
        ``full``: written because the buffer filled up (such a part is not merged, see _write_part)."""
        with self._lock:
            if self.failed or os.getpid() != self._pid:
                return
            try:
                got = self._drain()
                if got is None:
                    return
                columns, n = got
                self._write_part(columns, n, full)
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

    def _write_part(self, columns: dict[str, Any], n: int, full: bool = False) -> None:
        rank_dir = self._ensure_rank_dir()
        table = table_from_columns(columns, n, self._metadata())
        name = f"part-{self.parts:06d}.parquet"
        tmp = rank_dir / f".{name}.tmp"
        stored = table.drop_columns(["rank"])  # the partition directory says the rank
        with pq.ParquetWriter(tmp, stored.schema, **_WRITE_OPTIONS) as writer:
            writer.write_table(stored)
            _add_summary(writer, lambda: summarize(table))
        os.replace(tmp, rank_dir / name)
        self.parts += 1
        self.rows += n
        if not self.merge_parts:
            return
        # A full buffer (a fast loop) stays a file: merging would only encode its rows once more (it was
        # a third of a fast loop's writing). A time-based part is merged whatever its size, else a loop
        # of a few thousand steps/s would leave a file a second.
        if n >= MERGE_BELOW_ROWS and (full or n >= MERGE_ROWS):
            self._merge_small_parts(final=True)  # the parts before this one, so merged ranges stay contiguous
            return
        self._small.append((rank_dir / name, n))
        if len(self._small) >= MERGE_PARTS or sum(rows for _, rows in self._small) >= MERGE_ROWS:
            self._merge_small_parts()

    def _merge_small_parts(self, final: bool = False) -> None:
        """Merge the small parts into one file. Merged files still smaller than a full part are merged
        again once there are MERGE_MERGED of them: a slow loop writes a part a second, and without
        this would leave a file a minute. ``final``: merge everything pending (before a full part, so
        merged ranges stay contiguous, and at close)."""
        small, self._small = self._small, []
        rows = sum(n for _, n in small)
        if len(small) >= 2:
            merged = self._merge(small)
            if merged is None:  # failed: the parts stay as they are; start over after them
                self._merged = []
                return
            small = [(merged, rows)]
        if rows >= MERGE_ROWS // 4:
            self._merge(self._merged)  # the ones before, then this file stays as it is
            self._merged = []
            return
        self._merged += small
        if final or len(self._merged) >= MERGE_MERGED or sum(n for _, n in self._merged) >= MERGE_ROWS:
            self._merge(self._merged)
            self._merged = []

    def _merge(self, files: list[tuple[Path, int]]) -> Path | None:
        """Rewrite consecutive parts as one file, then delete them; readers skip parts a merged file
        covers, so a crash between the two steps duplicates nothing, and a failure only leaves them."""
        small = [path for path, _ in files]
        if len(small) < 2:
            return None
        first = int(PART_RE.match(small[0].name).group(1))
        m = PART_RE.match(small[-1].name)
        last = int(m.group(2) or m.group(1))
        name = f"part-{first:06d}-{last:06d}.parquet"
        tmp = small[0].parent / f".{name}.tmp"
        try:
            schema = pq.read_schema(small[-1])  # the last part's metadata has the fullest object registry
            summaries = [(pq.read_metadata(part).metadata or {}).get(SUMMARY_KEY) for part in small]
            with pq.ParquetWriter(tmp, schema, **_WRITE_OPTIONS) as writer:
                for part in small:
                    # Not pq.read_table: it imports pyarrow.dataset and reads on a thread pool, whose
                    # per-thread allocator heaps stay resident (+20 MB in a training process).
                    with pq.ParquetFile(part) as f:
                        table = f.read(use_threads=False)
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
                    del table
                    _release_memory()
                if all(summaries):
                    _add_summary(writer, lambda: merge_summaries(summaries))
            os.replace(tmp, small[0].parent / name)
            _release_memory()
        except Exception:  # noqa: BLE001 - the small parts are still there and complete
            tmp.unlink(missing_ok=True)
            return None
        for part in small:
            part.unlink(missing_ok=True)
        return small[0].parent / name

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

    def close(self, reason: str | None, findings: list[dict[str, Any]], ended: str | None = None) -> None:
        """Stop the thread, write what is left and the closing status, then merge the small parts
        (every row is on disk and the status says so before that last merge begins). Never raises.

        ``ended``: how the process left the trace ("normally", "exception: <type>", "signal: <name>");
        a rank whose status still says "running" (or has none) ended without closing it."""
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
            try:
                self._write_status(
                    state="closed",
                    complete=not incomplete,
                    reason=incomplete,
                    ended=ended or "normally",
                    end_unix_ns=time.time_ns(),
                    findings=findings,
                )
            except Exception as exc:  # noqa: BLE001
                if not self.failed:
                    self._fail(f"{type(exc).__name__}: {exc}")
            if not self.failed:
                self._merge_small_parts(final=True)


def claim_rank_dir(rank_dir: Path, run_id: str) -> None:
    """Create ``rank=<r>/`` for this run; refuse one that exists (never overwrite a trace)."""
    root = rank_dir.parent
    claim_root(root, run_id)
    for other in root.iterdir():
        if not RANK_RE.match(other.name):
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
        if (ours and entry.name == RUN_FILE) or RUN_TMP_RE.match(entry.name):
            continue  # this run's marker, or another rank of this run writing it now
        is_rank = RANK_RE.match(entry.name) is not None
        status = read_status(entry) if is_rank else None
        # A rank directory of this run may have no status yet: its rank is starting right now.
        same_run = is_rank and (ours or (status is not None and status.get("run_id") == run_id))
        if not same_run or entry.name == f"rank={rank}":
            raise TraceError(
                f"{root} already exists and is not empty; an existing trace is never overwritten: "
                "choose another output directory (--out)"
            )


