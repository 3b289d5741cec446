"""One streaming pass over a trace's parts: the aggregates a report is made of.

Only the needed columns are read, one part at a time (two threads read ahead), and each part is
reduced at once, so memory stays flat at any trace length: exact per-group LR statistics, a min/max
outline of each LR curve in at most ``Envelope.LIMIT`` buckets, timing distributions (exact up to
200,000 values, then a histogram within 0.8%), and the sampled update figures. Columns are read
from the Arrow buffers with numpy (no pyarrow compute call per part: those cost milliseconds).
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..tracefile import Trace
from ..tracefile.reader import conform, short_error
from ..tracefile.schema import (
    EPOCH_START,
    OPTIMIZER_STEP,
    OPTIMIZER_STEP_SKIPPED,
    ORIGIN_INIT,
    SCHEDULER_STEP,
    ZERO_GRAD,
)

SAMPLED = ("grad_norm", "param_norm", "update_norm", "update_ratio", "eff_lr")
COLUMNS = ["seq", "event", "optimizer", "scheduler", "group", "step", "lr", "dur_ns", "iter_ns", "data_wait_ns", "cuda_ns",
           "origin", "loader", *SAMPLED]
_KINDS = (OPTIMIZER_STEP, OPTIMIZER_STEP_SKIPPED, SCHEDULER_STEP, ZERO_GRAD, EPOCH_START)
_EV = {name: i for i, name in enumerate(_KINDS)}
_STEP, _SKIP, _SCHED, _ZERO, _EPOCH = range(len(_KINDS))
_OTHER = len(_KINDS)
MAX_MARKS = 10_000  # skipped steps and epoch starts kept for plots
MAX_RANK_CURVES = 64  # ranks besides the primary whose LR outline is kept (the per-rank overlay)


# ------------------------------------------------------------------------------------- building blocks
class Dist:
    """A distribution of durations (ns): exact while small, then a log-histogram.

    Bins come from the float64 bits (exponent and the top 6 mantissa bits): 64 bins per doubling,
    at most 1.6% wide, computed without a logarithm; a quantile is its bin's middle (within 0.8%).
    """

    SUB = 6
    BINS = 46 << SUB  # 1 ns .. 2**46 ns (19 h); bin 0 also holds 0 ns
    _ONE = 1023 << SUB
    EXACT = 200_000

    def __init__(self) -> None:
        self.n = 0
        self.total = 0
        self.max = 0
        self.raw: list[np.ndarray] | None = []
        self.counts = np.zeros(self.BINS, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        if values.min() < 0:  # -1: no value
            values = values[values >= 0]
            if not len(values):
                return
        self.n += len(values)
        self.total += int(values.sum())
        self.max = max(self.max, int(values.max()))
        bins = (values.astype(np.float64).view(np.int64) >> (52 - self.SUB)) - self._ONE
        self.counts += np.bincount(np.clip(bins, 0, self.BINS - 1), minlength=self.BINS)
        if self.raw is not None:
            self.raw.append(values)
            if self.n > self.EXACT:
                self.raw = None

    def quantile(self, q: float) -> float:
        if self.raw is not None:
            return float(np.quantile(np.concatenate(self.raw), q))
        i = int(np.searchsorted(np.cumsum(self.counts), q * self.n))
        octave, sub = divmod(i, 1 << self.SUB)
        return float(2.0 ** octave * (1 + (sub + 0.5) / (1 << self.SUB)))

    def to_dict(self) -> dict | None:
        if not self.n:
            return None
        return {"n": self.n, "p50": self.quantile(0.5), "p95": self.quantile(0.95), "max": self.max,
                "mean": self.total / self.n, "exact": self.raw is not None}


class Envelope:
    """Min and max LR per bucket of 2**shift steps: the outline of a curve of any length in few points."""

    LIMIT = 4096

    def __init__(self) -> None:
        self.shift = 0
        self.ids = np.empty(0, dtype=np.int64)
        self.lo = np.empty(0)
        self.hi = np.empty(0)

    def add(self, steps: np.ndarray, lrs: np.ndarray) -> None:
        ids = np.maximum(steps - 1, 0) >> self.shift
        self._reduce(np.concatenate([self.ids, ids]), np.concatenate([self.lo, lrs]), np.concatenate([self.hi, lrs]))
        while len(self.ids) > self.LIMIT:
            self.shift += 1
            self._reduce(self.ids >> 1, self.lo, self.hi)

    def _reduce(self, ids, lo, hi) -> None:
        if not len(ids):
            return
        if (ids[1:] < ids[:-1]).any():
            order = np.argsort(ids, kind="stable")
            ids, lo, hi = ids[order], lo[order], hi[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        self.ids, self.lo, self.hi = ids[starts], np.fmin.reduceat(lo, starts), np.fmax.reduceat(hi, starts)

    def points(self, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(first step of each bucket, min LR, max LR, steps per bucket), at most ``max_points`` buckets."""
        ids, lo, hi, shift = self.ids, self.lo, self.hi, self.shift
        while max_points and len(ids) > max_points:
            shift += 1
            ids = ids >> 1
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            ids, lo, hi = ids[starts], np.fmin.reduceat(lo, starts), np.fmax.reduceat(hi, starts)
        return (ids << shift) + 1, lo, hi, 1 << shift


class Series:
    """Mean and max of a few timings per bucket of 2**shift steps: a run's step time in few points.

    Values < 0 (not measured) are left out of their bucket; a bucket with none has a NaN mean.
    """

    LIMIT = 4096
    NAMES = ("iter_ns", "dur_ns", "data_wait_ns")

    def __init__(self) -> None:
        self.shift = 0
        self.ids = np.empty(0, dtype=np.int64)
        k = len(self.NAMES)
        self.sums = np.empty((0, k))
        self.counts = np.empty((0, k))
        self.maxs = np.empty((0, k))

    def add(self, steps: np.ndarray, values: np.ndarray) -> None:
        """``values``: one column per name in ``NAMES``, one row per step."""
        values = values.astype(np.float64)
        ok = values >= 0
        ids = np.maximum(steps - 1, 0).astype(np.int64) >> self.shift
        self._reduce(np.concatenate([self.ids, ids]), np.concatenate([self.sums, np.where(ok, values, 0)]),
                     np.concatenate([self.counts, ok.astype(np.float64)]),
                     np.concatenate([self.maxs, np.where(ok, values, -1.0)]))
        while len(self.ids) > self.LIMIT:
            self.shift += 1
            self._reduce(self.ids >> 1, self.sums, self.counts, self.maxs)

    def _reduce(self, ids, sums, counts, maxs) -> None:
        if not len(ids):
            return
        if (ids[1:] < ids[:-1]).any():
            order = np.argsort(ids, kind="stable")
            ids, sums, counts, maxs = ids[order], sums[order], counts[order], maxs[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        self.ids = ids[starts]
        self.sums = np.add.reduceat(sums, starts, axis=0)
        self.counts = np.add.reduceat(counts, starts, axis=0)
        self.maxs = np.maximum.reduceat(maxs, starts, axis=0)

    def points(self, max_points: int | None = None) -> dict[str, np.ndarray]:
        """``step`` (first step of each bucket), ``steps_per_point``, and per name ``{name}_mean``,
        ``{name}_max`` (NaN where nothing was measured), in at most ``max_points`` buckets."""
        ids, sums, counts, maxs, shift = self.ids, self.sums, self.counts, self.maxs, self.shift
        while max_points and len(ids) > max_points:
            shift += 1
            ids = ids >> 1
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            ids = ids[starts]
            sums, counts = np.add.reduceat(sums, starts, axis=0), np.add.reduceat(counts, starts, axis=0)
            maxs = np.maximum.reduceat(maxs, starts, axis=0)
        out: dict[str, np.ndarray] = {"step": (ids << shift) + 1, "steps_per_point": np.array(1 << shift)}
        with np.errstate(invalid="ignore", divide="ignore"):
            for j, name in enumerate(self.NAMES):
                n = counts[:, j]
                out[f"{name}_mean"] = np.where(n > 0, sums[:, j] / np.maximum(n, 1), np.nan)
                out[f"{name}_max"] = np.where(n > 0, maxs[:, j], np.nan)
        return out


class GroupStats:
    """Exact LR statistics of one (rank, optimizer, group)."""

    __slots__ = ("steps", "first_lr", "last_lr", "first_step", "last_step", "min_lr", "max_lr", "nonfinite")

    def __init__(self) -> None:
        self.steps = 0
        self.first_lr = self.last_lr = self.min_lr = self.max_lr = math.nan
        self.first_step = self.last_step = None
        self.nonfinite = 0

    def add(self, steps: np.ndarray, lrs: np.ndarray) -> None:
        if not self.steps:
            self.first_lr, self.first_step = float(lrs[0]), int(steps[0])
        self.steps += len(lrs)
        self.last_lr, self.last_step = float(lrs[-1]), int(steps[-1])
        lo, hi = lrs.min(), lrs.max()  # NaN propagates, so a NaN anywhere fails the test below
        if math.isfinite(lo) and math.isfinite(hi):
            finite = lrs
        else:
            mask = np.isfinite(lrs)
            self.nonfinite += int(len(lrs) - mask.sum())
            finite = lrs[mask]
            if not len(finite):
                return
            lo, hi = finite.min(), finite.max()
        self.min_lr = float(np.fmin(self.min_lr, lo))
        self.max_lr = float(np.fmax(self.max_lr, hi))


class Samples:
    """The sampled update figures of one group (halved whenever more than ``CAP`` are held)."""

    CAP = 100_000

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        self.n = 0

    def add(self, cols: dict[str, np.ndarray]) -> None:
        for k, v in cols.items():
            self.cols[k].append(v)
        self.n += len(cols["step"])
        if self.n > self.CAP:
            arrays = self.arrays()
            self.cols = collections.defaultdict(list, {k: [v[::2]] for k, v in arrays.items()})
            self.n = len(self.cols["step"][0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}


class Columns:
    """Numpy views of one record batch's columns, read straight from the Arrow buffers."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.arrays = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        self._raw: dict[str, tuple[np.ndarray, np.ndarray | None] | None] = {}

    def raw(self, name: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(values, validity or None when all valid), or None when the column is absent or all null."""
        if name not in self._raw:
            arr = self.arrays.get(name)
            if arr is not None and pa.types.is_dictionary(arr.type):
                arr = arr.indices
            if arr is None or arr.null_count == len(arr):
                self._raw[name] = None
            else:
                n, off = len(arr), arr.offset
                validity, data = arr.buffers()[:2]
                values = np.frombuffer(data, dtype=arr.type.to_pandas_dtype(), count=off + n)[off:]
                valid = None
                if arr.null_count:
                    bits = np.frombuffer(validity, np.uint8)
                    valid = np.unpackbits(bits, count=off + n, bitorder="little")[off:].view(bool)
                self._raw[name] = (values, valid)
        return self._raw[name]

    def has(self, name: str) -> bool:
        return self.raw(name) is not None

    def take(self, name: str, idx: np.ndarray | None, fill) -> np.ndarray:
        """Values at rows ``idx`` (all rows for None), nulls replaced by ``fill``."""
        raw = self.raw(name)
        n = len(self.arrays["event"]) if idx is None else len(idx)
        if raw is None:
            return np.full(n, fill)
        values, valid = raw
        out = values if idx is None else values[idx]
        if valid is not None:
            out = np.where(valid if idx is None else valid[idx], out, fill)
        return out

    def codes(self, name: str, names: dict[str, int], idx: np.ndarray | None = None) -> np.ndarray:
        """Small integer codes of a string column (``len(names)``: null or any other value)."""
        arr = self.arrays.get(name)
        other = len(names)
        if arr is None:
            return np.full(len(self.arrays["event"]) if idx is None else len(idx), other, dtype=np.int16)
        if not pa.types.is_dictionary(arr.type):
            arr = self.arrays[name] = arr.cast(pa.string()).dictionary_encode()
        lut = np.array([names.get(v, other) for v in arr.dictionary.to_pylist()] + [other], dtype=np.int16)
        return lut[self.take(name, idx, len(lut) - 1)]


# ------------------------------------------------------------------------------------- the scan
class Scan:
    """Aggregates of every part of a trace; detail (curves, timing, epochs) for the primary rank only."""

    def __init__(self, primary: int) -> None:
        self.primary = primary
        self.rows = 0
        self.groups: dict[tuple[int, int, int], GroupStats] = {}
        self.curves: dict[tuple[int, int], Envelope] = {}
        self.rank_curves: dict[tuple[int, int, int], Envelope] = {}  # other ranks: (rank, optimizer, group)
        self._curve_ranks: set[int] = set()
        self.step_time: dict[int, Series] = collections.defaultdict(Series)  # optimizer -> step time outline
        self.samples: dict[tuple[int, int], Samples] = {}
        self.skipped: collections.Counter = collections.Counter()  # (rank, optimizer) -> skipped steps
        self.skipped_steps: dict[int, list[int]] = collections.defaultdict(list)
        self.sched_steps: collections.Counter = collections.Counter()  # (rank, scheduler) -> steps
        self.timing: dict[int, dict[str, Dist]] = collections.defaultdict(
            lambda: {k: Dist() for k in ("dur_ns", "iter_ns", "data_wait_ns", "cuda_ns")})
        self.sums: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])  # dur, iter, wait, waits
        self.slowest: dict[int, list[tuple[int, int, int, int]]] = collections.defaultdict(list)
        self.sched_dur = Dist()
        self.zero_dur = Dist()
        self.last_step: dict[int, int] = {}
        self.epochs: list[tuple[int, dict[int, int]]] = []  # (loader, optimizer -> steps done)

    def add(self, rank: int, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        c = Columns(batch)
        ev = c.codes("event", _EV)
        present = np.bincount(ev, minlength=_OTHER + 1)
        rows = [np.flatnonzero(ev == k) if present[k] else np.empty(0, dtype=np.intp) for k in range(_OTHER)]
        primary = rank == self.primary
        seq = c.take("seq", None, -1)
        first_rows = None
        if len(rows[_STEP]):
            idx = rows[_STEP]
            s = seq[idx]
            if (s[1:] < s[:-1]).any():  # a part need not hold its rows in call order
                order = np.argsort(s, kind="stable")
                idx, s = idx[order], s[order]
            first_rows = self._steps(rank, primary, c, idx, s)
        if len(rows[_SKIP]):
            self._skipped(rank, primary, c, rows[_SKIP])
        if len(rows[_SCHED]):
            idx = rows[_SCHED]
            idx = idx[(c.take("group", idx, -1) <= 0) & (c.codes("origin", {ORIGIN_INIT: 0}, idx) != 0)]
            scheds = c.take("scheduler", idx, -1)
            if len(scheds) and scheds.min() == scheds.max():
                self.sched_steps[(rank, int(scheds[0]))] += len(scheds)
            else:
                for k, n in zip(*[a.tolist() for a in np.unique(scheds, return_counts=True)]):
                    self.sched_steps[(rank, k)] += n
            if primary:
                self.sched_dur.add(c.take("dur_ns", idx, -1))
        if primary and len(rows[_ZERO]):
            self.zero_dur.add(c.take("dur_ns", rows[_ZERO], -1))
        if primary and (len(rows[_EPOCH]) or first_rows is not None):
            self._epochs(c, seq, rows[_EPOCH], first_rows)

    def _steps(self, rank: int, primary: bool, c: Columns, idx: np.ndarray, seq: np.ndarray):
        """Optimizer steps: LR statistics for every rank; curve, samples and timing for the primary."""
        o, g = c.take("optimizer", idx, -1), c.take("group", idx, -1)
        single = o.min() == o.max() and g.min() == g.max()
        steps, lrs = c.take("step", idx, -1), c.take("lr", idx, np.nan).astype(np.float64, copy=False)
        all_steps = steps
        if single:
            slices = [((int(o[0]), int(g[0])), slice(None))]
            order = None
        else:
            key = (o.astype(np.int64) << 32) | (g.astype(np.int64) & 0xFFFFFFFF)
            order = np.argsort(key, kind="stable")
            key, steps, lrs = key[order], steps[order], lrs[order]
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).tolist()
            slices = [((k >> 32, ((k & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000), slice(a, z))  # sign-extends
                      for k, a, z in zip(key[starts].tolist(), starts, starts[1:] + [len(key)])]
        for k, sl in slices:
            stats = self.groups.get((rank, *k))
            if stats is None:
                stats = self.groups[(rank, *k)] = GroupStats()
            stats.add(steps[sl], lrs[sl])
            if primary:
                self.curves.setdefault(k, Envelope()).add(steps[sl], lrs[sl])
            elif rank in self._curve_ranks or len(self._curve_ranks) < MAX_RANK_CURVES:
                self._curve_ranks.add(rank)
                self.rank_curves.setdefault((rank, *k), Envelope()).add(steps[sl], lrs[sl])
        if not primary:
            return None
        sampled = next((name for name in ("update_norm", "eff_lr", *SAMPLED) if c.has(name)), None)
        if sampled is not None:
            self._samples(c, idx if order is None else idx[order], sampled, slices)
        if single and g[0] == 0:
            return self._timing(c, idx, o, all_steps, seq)
        first = g == 0
        return self._timing(c, idx[first], o[first], all_steps[first], seq[first])

    def _samples(self, c: Columns, idx: np.ndarray, probe: str, slices) -> None:
        valid = c.raw(probe)[1]
        for k, sl in slices:
            rows = idx[sl]
            rows = rows if valid is None else rows[valid[rows]]
            if len(rows):
                cols = {"step": c.take("step", rows, -1), "lr": c.take("lr", rows, np.nan)}
                cols.update({name: c.take(name, rows, np.nan).astype(np.float64) for name in SAMPLED})
                self.samples.setdefault(k, Samples()).add(cols)

    def _timing(self, c: Columns, idx: np.ndarray, o: np.ndarray, steps: np.ndarray, seq: np.ndarray):
        """Per optimizer, one row per step (group 0): durations, shares, slowest steps."""
        dur, it, wait = c.take("dur_ns", idx, -1), c.take("iter_ns", idx, -1), c.take("data_wait_ns", idx, -1)
        cuda = c.take("cuda_ns", idx, -1) if c.has("cuda_ns") else None
        single = len(o) and o.min() == o.max()
        for k in ([int(o[0])] if single else np.unique(o).tolist()):
            m = slice(None) if single else o == k
            d, i, w = dur[m], it[m], wait[m]
            dists = self.timing[k]
            dists["dur_ns"].add(d)
            dists["iter_ns"].add(i)
            dists["data_wait_ns"].add(w)
            self.step_time[k].add(steps[m], np.stack([i, d, w], axis=1))
            if cuda is not None:
                dists["cuda_ns"].add(cuda[m])
            timed = i >= 0
            sums = self.sums[k]
            sums[0] += int(d[timed].sum())
            sums[1] += int(i[timed].sum())
            sums[2] += int(w[timed & (w >= 0)].sum())
            sums[3] += int((w[timed] >= 0).sum())
            by = i if timed.any() else d
            top = np.argpartition(by, -5)[-5:] if len(by) > 5 else np.arange(len(by))
            s = steps[m]
            cand = self.slowest[k] + [(int(by[j]), int(s[j]), int(d[j]), int(w[j])) for j in top]
            self.slowest[k] = sorted(cand, reverse=True)[:5]
        return seq, o, steps

    def _skipped(self, rank: int, primary: bool, c: Columns, idx: np.ndarray) -> None:
        idx = idx[c.take("group", idx, -1) <= 0]  # one row per skipped step
        opts = c.take("optimizer", idx, -1)
        for k, n in zip(*[a.tolist() for a in np.unique(opts, return_counts=True)]):
            self.skipped[(rank, k)] += n
        if primary:
            for k, s in zip(opts.tolist(), c.take("step", idx, -1).tolist()):
                if len(self.skipped_steps[k]) < MAX_MARKS:
                    self.skipped_steps[k].append(s)

    def _epochs(self, c: Columns, seq: np.ndarray, epoch_rows: np.ndarray, first_rows) -> None:
        """At each epoch start: how many steps each optimizer had done (its last step so far)."""
        positions = {}
        if first_rows is not None:
            step_seq, o, steps = first_rows
            if len(o) and o.min() == o.max():
                positions[int(o[0])] = (step_seq, steps)
            else:
                for k in np.unique(o).tolist():
                    m = o == k
                    positions[k] = (step_seq[m], steps[m])
        if len(epoch_rows):
            loaders = c.take("loader", epoch_rows, -1)
            for e, loader in sorted(zip(seq[epoch_rows].tolist(), loaders.tolist())):
                at = dict(self.last_step)
                for k, (pos, st) in positions.items():
                    i = int(np.searchsorted(pos, e)) - 1
                    if i >= 0:
                        at[k] = int(st[i])
                if len(self.epochs) < MAX_MARKS:
                    self.epochs.append((loader, at))
        for k, (_, st) in positions.items():
            self.last_step[k] = int(st[-1])


def read_part(path: Path, columns: list[str] = COLUMNS) -> tuple[list[pa.RecordBatch], int | None]:
    """One part's batches and its largest ``t_ns``. A column the part's footer says is entirely null
    (the sampled norms, ``cuda_ns``, ``loader`` in most runs) is not read: readers treat it as absent."""
    pf = pq.ParquetFile(path, memory_map=True)
    names = pf.schema_arrow.names
    md = pf.metadata

    def stats(name):
        j = names.index(name)
        return [(md.row_group(r).column(j).statistics, md.row_group(r).num_rows) for r in range(md.num_row_groups)]

    wanted = [c for c in columns if c in names and not (
        c != "event" and all(s is not None and s.null_count == n for s, n in stats(c)))]
    t_max = None
    if "t_ns" in names:
        maxima = [s.max for s, _ in stats("t_ns") if s is not None and s.has_min_max]
        t_max = max(maxima) if maxima and all(type(m) is int for m in maxima) else None
    table = conform(pf.read(columns=wanted, use_threads=False))  # an untrusted file: cast, validate
    if "event" not in table.column_names:
        raise ValueError("no event column")
    return table.to_batches(), t_max


def scan_trace(trace: Trace, only_primary: bool = False) -> tuple[Scan, dict[int, int], int]:
    """Stream the readable parts of ``trace`` through a ``Scan``; parts that fail are added to ``trace.skipped``.

    ``only_primary``: read the lowest rank's parts alone (the other ranks are summarised in DuckDB).
    Returns the scan, the largest ``t_ns`` per rank and the number of parts read.
    """
    skipped = {s.split(" (")[0] for s in trace.skipped}
    parts = [(r, p) for r, p in trace.parts if str(p.relative_to(trace.path)) not in skipped]
    scan = Scan(min([r for r, _ in parts] or trace.ranks or [0]))
    if only_primary:
        parts = [(r, p) for r, p in parts if r == scan.primary]
    t_max: dict[int, int] = {}
    read = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        ahead = collections.deque()
        todo = iter(parts)
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
