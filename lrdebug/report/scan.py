"""One streaming pass over a trace's parts: the aggregates a report is made of (``tracefile.summary``).

A closed trace's parts carry their own summary in the footer: per rank, those are merged, and where
the result equals what a scan of the rows gives (``Scan.exact``) no row is read. Otherwise only the
needed columns are read, one part at a time (two threads read ahead), and each part is reduced at
once, so memory stays flat at any trace length. ``LRDEBUG_SUMMARIES=0`` reads every row.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..tracefile import Trace
from ..tracefile.reader import conform, short_error
from ..tracefile.summary import (  # noqa: F401 - the building blocks, where renderers and tests find them
    COLUMNS,
    MAX_MARKS,
    MAX_RANK_CURVES,
    SAMPLED,
    SUMMARY_KEY,
    Dist,
    Envelope,
    GroupStats,
    Samples,
    Scan,
    Series,
    load_summary,
)


MERGE_AT_ONCE = 64  # part summaries held at once (~120 kB each): their outlines are merged in one reduction


def t_max_of(md: pq.FileMetaData) -> int | None:
    """The largest ``t_ns`` of a part, from its footer's statistics (None when they do not say)."""
    names = md.schema.names
    if "t_ns" not in names:
        return None
    j = names.index("t_ns")
    stats = [md.row_group(r).column(j).statistics for r in range(md.num_row_groups)]
    maxima = [s.max for s in stats if s is not None and s.has_min_max]
    return max(maxima) if maxima and all(type(m) is int for m in maxima) else None


def read_part(path: Path, columns: list[str] = COLUMNS) -> tuple[list[pa.RecordBatch], int | None]:
    """One part as one batch, and its largest ``t_ns``. A column the part's footer says is entirely null
    (the sampled norms, ``cuda_ns``, ``loader`` in most runs) is not read: readers treat it as absent.
    One batch per part, as the writer summarised it (the sampled figures are thinned per batch)."""
    pf = pq.ParquetFile(path, memory_map=True)
    names = pf.schema_arrow.names
    md = pf.metadata

    def all_null(name):
        j = names.index(name)
        return all((s := md.row_group(r).column(j).statistics) is not None and s.null_count == md.row_group(r).num_rows
                   for r in range(md.num_row_groups))

    wanted = [c for c in columns if c in names and not (c != "event" and all_null(c))]
    table = conform(pf.read(columns=wanted, use_threads=False))  # an untrusted file: cast, validate
    if "event" not in table.column_names:
        raise ValueError("no event column")
    return table.combine_chunks().to_batches(max_chunksize=max(1, table.num_rows)), t_max_of(md)


class Summaries:
    """Per rank, the summaries stored in its parts' footers, merged as ``read_trace(on_part=...)`` opens
    them (a rank's parts come in order); a rank with a part without a usable one (an older trace, a
    damaged footer) has none. ``few``: every rank keeps its detail (curves, timing), else the first rank
    alone (the primary); the others only their counts and the cross-rank figures. ``cross``: those
    figures are wanted. Nothing is kept when ``LRDEBUG_SUMMARIES=0``."""

    def __init__(self, few: bool, cross: bool) -> None:
        self.few, self.cross = few, cross
        self.enabled = os.environ.get("LRDEBUG_SUMMARIES", "1") != "0"
        self.merged: dict[int, Scan | None] = {}
        self.t_max: dict[int, int] = {}
        self._pending: list[Scan] = []
        self._rank: int | None = None

    def __call__(self, rank: int | None, part: Path | None, md: pq.FileMetaData | None) -> None:
        if rank is None:  # the read starts over (``read_trace``)
            self.merged, self.t_max, self._pending, self._rank = {}, {}, [], None
            return
        tm = t_max_of(md)
        if tm is not None:
            self.t_max[rank] = max(self.t_max.get(rank, tm), tm)
        if not self.enabled:
            return
        if rank != self._rank:
            self._flush()
            self._rank = rank
            self.merged[rank] = Scan(rank)
            self.merged[rank].detailed = self.few or len(self.merged) == 1
        merged = self.merged[rank]
        if merged is None:
            return
        try:
            p = load_summary((md.metadata or {})[SUMMARY_KEY], merged.detailed, self.cross)
            if p.rows != md.num_rows:
                raise ValueError("summary of other rows")
        except Exception:  # noqa: BLE001 - the rank's rows are read instead
            self.merged[rank], self._pending = None, []
            return
        self._pending.append(p)
        if len(self._pending) >= MERGE_AT_ONCE:
            self._flush()

    def _flush(self) -> None:
        merged = self.merged.get(self._rank)
        if merged is not None and self._pending:
            merged.merge(self._pending, detail=merged.detailed)
        self._pending = []

    def result(self) -> dict[int, Scan]:
        """Per rank whose every readable part had a summary, their merge."""
        self._flush()
        return {r: m for r, m in self.merged.items() if m is not None}


def scan_trace(trace: Trace, only_primary: bool = False,
               summaries: Summaries | None = None) -> tuple[Scan, dict[int, int], int]:
    """Stream the readable parts of ``trace`` through a ``Scan``; parts that fail are added to ``trace.skipped``.

    ``only_primary``: read the lowest rank's parts alone (the other ranks are summarised in DuckDB).
    ``summaries`` (filled while the trace was read): a rank whose merged summary is exact is not read.
    Returns the scan, the largest ``t_ns`` per rank and the number of parts read.
    """
    skipped = {s.split(" (")[0] for s in trace.skipped}
    parts = [(r, p) for r, p in trace.parts if str(p.relative_to(trace.path)) not in skipped]
    scan = Scan(min([r for r, _ in parts] or trace.ranks or [0]))
    if only_primary:
        parts = [(r, p) for r, p in parts if r == scan.primary]
    t_max: dict[int, int] = {}
    read = 0
    todo = []
    merged_ranks = summaries.result() if summaries is not None else {}
    for rank in sorted({r for r, _ in parts}):
        mine = [p for r, p in parts if r == rank]
        merged = merged_ranks.get(rank)
        if merged is None or not merged.detailed or not merged.exact(rank == scan.primary):
            todo += [(rank, p) for p in mine]
            continue
        scan.take_rank(rank, merged)
        read += len(mine)
        if rank in summaries.t_max:
            t_max[rank] = summaries.t_max[rank]
    with ThreadPoolExecutor(max_workers=2) as pool:
        ahead = collections.deque()
        todo = iter(todo)
        for rank, part in todo:
            ahead.append((rank, part, pool.submit(read_part, part)))
            if len(ahead) >= 3:
                break
        while ahead:
            rank, part, future = ahead.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append((*nxt, pool.submit(read_part, nxt[1])))
            try:
                batches, tm = future.result()
            except Exception as exc:  # noqa: BLE001 - a part that cannot be read is named and skipped
                trace.skipped.append(f"{part.relative_to(trace.path)} ({short_error(exc)})")
                continue
            read += 1
            if tm is not None:
                t_max[rank] = max(t_max.get(rank, tm), tm)
            for b in batches:
                scan.add(rank, b)
    return scan, t_max, read
