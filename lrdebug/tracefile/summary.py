"""The aggregates a report is made of, reduced from one part's columns; and a part's summary.

A part is reduced at once with numpy, so memory stays flat at any trace length: exact per-group LR
statistics, a min/max outline of each LR curve in at most ``Envelope.LIMIT`` buckets, timing
distributions (exact up to 200,000 values, then a histogram within 0.8%), and the sampled update
figures. Columns are read from the Arrow buffers with numpy (no pyarrow compute call per part: those
cost milliseconds).

Every aggregate merges exactly, so the writer stores each part's reduction in the part's footer
(``SUMMARY_KEY``, see ``summarize``) and a report of a long run reads footers instead of rows.
Outlines are stored coarser (``PART_LIMIT`` buckets) and distributions without their raw values:
``Scan.exact`` says whether the merged result equals a scan of the rows, else the rows are read.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import zlib

import numpy as np
import pyarrow as pa

from .schema import (
    EPOCH_START,
    OPTIMIZER_STEP,
    OPTIMIZER_STEP_SKIPPED,
    ORIGIN_INIT,
    SCHEDULER_STEP,
    ZERO_GRAD,
)

SUMMARY_KEY = b"lrdebug.summary"
SUMMARY_VERSION = 1
PART_LIMIT = 1024  # buckets of a part's stored outlines: exact for a rank of more than ~4 such parts
XSUB = 64  # the cross-rank timing histograms: bins per doubling of floor(log2(ns) * XSUB)
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
    Quantiles are nearest-rank (a duration that occurred, the ceil(q*n)-th smallest), exact or binned
    alike: the report's per-rank and cross-rank tables then agree even on a few steps.
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

    def merge(self, other: Dist) -> None:
        """Add a part's distribution (a stored one has no raw values: then only the histogram is exact)."""
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.sparse is not None:
            np.add.at(self.counts, *other.sparse)
        else:
            self.counts += other.counts
        if self.raw is not None and other.raw is not None and self.n <= self.EXACT:
            self.raw += other.raw
        else:
            self.raw = None

    @property
    def exact(self) -> bool:
        """As a scan of the values would give it: raw values kept, or enough values for the histogram."""
        return self.raw is not None or self.n > self.EXACT or not self.n

    sparse: tuple[np.ndarray, np.ndarray] | None = None  # a stored distribution: (bins, counts), to merge

    def state(self) -> list:
        nz, counts = self.sparse or (np.flatnonzero(self.counts), self.counts[np.flatnonzero(self.counts)])
        return [self.n, self.total, self.max, _pack(nz.astype(np.int32)), _pack(counts.astype(np.int64))]

    @classmethod
    def from_state(cls, st: list) -> Dist:
        """A stored distribution, only to be merged into another (its histogram stays sparse)."""
        d = cls.__new__(cls)
        d.n, d.total, d.max = _int(st[0]), _int(st[1]), _int(st[2])
        nz, counts = _unpack(st[3], np.int32), _unpack(st[4], np.int64)
        if len(nz) != len(counts) or (len(nz) and (nz.min() < 0 or nz.max() >= cls.BINS)) or counts.sum() != d.n:
            raise ValueError("bad distribution")
        d.sparse, d.raw = (nz, counts), None
        return d

    def quantile(self, q: float) -> float:
        if self.raw is not None:
            return float(np.quantile(np.concatenate(self.raw), q, method="inverted_cdf"))
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

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or self.LIMIT
        self.shift = 0
        self.floor = 0  # the coarsest shift of a merged outline
        self.ids = np.empty(0, dtype=np.int64)
        self.lo = np.empty(0)
        self.hi = np.empty(0)

    def add(self, steps: np.ndarray, lrs: np.ndarray) -> None:
        ids = np.maximum(steps - 1, 0)
        s = max(self.shift, _least_shift(ids, self.limit))
        ids = ids >> s
        old = self.ids >> (s - self.shift)
        self.shift = s
        self._reduce(np.concatenate([old, ids]), np.concatenate([self.lo, lrs]), np.concatenate([self.hi, lrs]))
        self._fit()

    def _fit(self) -> None:
        while len(self.ids) > self.limit:
            self.shift += 1
            self._reduce(self.ids >> 1, self.lo, self.hi)

    def merge(self, *others: Envelope) -> None:
        """Add other outlines. Each bucket's min and max do not depend on the order, and an outline's
        shift is the least that fits its steps, so the result is a scan's while ``exact``."""
        every = [self, *others]
        self.floor = max(self.floor, *(max(o.floor, o.shift) for o in others))
        s = max(e.shift for e in every)
        ids = np.concatenate([e.ids >> (s - e.shift) for e in every])
        self.shift = s
        self._reduce(ids, np.concatenate([e.lo for e in every]), np.concatenate([e.hi for e in every]))
        self._fit()

    @property
    def exact(self) -> bool:
        """The buckets a scan of the steps would have: finer outlines were merged, or the merge had to
        go coarser than any of them (so the least shift that fits is known)."""
        return self.floor == 0 or self.shift > self.floor

    def state(self) -> list:
        return [self.shift, _pack(self.ids), _pack(self.lo), _pack(self.hi)]

    @classmethod
    def from_state(cls, st: list, limit: int | None = None) -> Envelope:
        e = cls(limit)
        e.shift = _shift(st[0])
        e.ids, e.lo, e.hi = _unpack(st[1], np.int64), _unpack(st[2], np.float64), _unpack(st[3], np.float64)
        if not len(e.ids) == len(e.lo) == len(e.hi) or (len(e.ids) and (e.ids[1:] <= e.ids[:-1]).any()):
            raise ValueError("bad outline")
        return e

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

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or self.LIMIT
        self.shift = 0
        self.floor = 0
        self.ids = np.empty(0, dtype=np.int64)
        k = len(self.NAMES)
        self.sums = np.empty((0, k))
        self.counts = np.empty((0, k))
        self.maxs = np.empty((0, k))

    def add(self, steps: np.ndarray, values: np.ndarray) -> None:
        """``values``: one column per name in ``NAMES``, one row per step."""
        values = values.astype(np.float64)
        ok = values >= 0
        ids = np.maximum(steps - 1, 0).astype(np.int64)
        s = max(self.shift, _least_shift(ids, self.limit))
        ids = ids >> s
        old = self.ids >> (s - self.shift)
        self.shift = s
        self._reduce(np.concatenate([old, ids]), np.concatenate([self.sums, np.where(ok, values, 0)]),
                     np.concatenate([self.counts, ok.astype(np.float64)]),
                     np.concatenate([self.maxs, np.where(ok, values, -1.0)]))
        self._fit()

    def _fit(self) -> None:
        while len(self.ids) > self.limit:
            self.shift += 1
            self._reduce(self.ids >> 1, self.sums, self.counts, self.maxs)

    def merge(self, *others: Series) -> None:
        """As ``Envelope.merge`` (sums of integer nanoseconds are exact in float64 in any order)."""
        every = [self, *others]
        self.floor = max(self.floor, *(max(o.floor, o.shift) for o in others))
        s = max(e.shift for e in every)
        ids = np.concatenate([e.ids >> (s - e.shift) for e in every])
        self.shift = s
        self._reduce(ids, *(np.concatenate([getattr(e, name) for e in every]) for name in ("sums", "counts", "maxs")))
        self._fit()

    exact = Envelope.exact

    def state(self) -> list:
        """Sums, counts and maxima are whole nanoseconds and counts: stored as integers."""
        return [self.shift, _pack(self.ids), *(_pack(a.astype(np.int64)) for a in (self.sums, self.counts, self.maxs))]

    @classmethod
    def from_state(cls, st: list, limit: int | None = None) -> Series:
        e = cls(limit)
        e.shift = _shift(st[0])
        k = len(cls.NAMES)
        e.ids = _unpack(st[1], np.int64)
        e.sums, e.counts, e.maxs = (_unpack(x, np.int64).astype(np.float64).reshape(-1, k) for x in st[2:5])
        if not len(e.ids) == len(e.sums) == len(e.counts) == len(e.maxs) or (len(e.ids) and (e.ids[1:] <= e.ids[:-1]).any()):
            raise ValueError("bad step-time outline")
        return e

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

    def merge(self, other: GroupStats) -> None:
        """Add the statistics of later rows."""
        if not other.steps:
            return
        if not self.steps:
            self.first_lr, self.first_step = other.first_lr, other.first_step
        self.steps += other.steps
        self.last_lr, self.last_step = other.last_lr, other.last_step
        self.nonfinite += other.nonfinite
        self.min_lr = float(np.fmin(self.min_lr, other.min_lr))
        self.max_lr = float(np.fmax(self.max_lr, other.max_lr))

    def state(self) -> list:
        return [getattr(self, k) for k in self.__slots__]

    @classmethod
    def from_state(cls, st: list) -> GroupStats:
        g = cls()
        g.steps, g.first_lr, g.last_lr, g.first_step, g.last_step = int(st[0]), float(st[1]), float(st[2]), st[3], st[4]
        g.min_lr, g.max_lr, g.nonfinite = float(st[5]), float(st[6]), int(st[7])
        if g.steps < 1 or type(g.first_step) is not int or type(g.last_step) is not int:
            raise ValueError("bad group statistics")
        return g


class Samples:
    """The sampled update figures of one group (halved whenever more than ``CAP`` are held)."""

    CAP = 100_000

    def __init__(self) -> None:
        self.cols: dict[str, list[np.ndarray]] = collections.defaultdict(list)
        self.n = 0
        self.halved = False

    def add(self, cols: dict[str, np.ndarray]) -> None:
        for k, v in cols.items():
            self.cols[k].append(v)
        self.n += len(cols["step"])
        if self.n > self.CAP:
            arrays = self.arrays()
            self.cols = collections.defaultdict(list, {k: [v[::2]] for k, v in arrays.items()})
            self.n = len(self.cols["step"][0])
            self.halved = True

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
    """Aggregates of every part of a trace; detail (curves, timing, epochs) for the primary rank only.

    ``part=True``: the summary of one part (or of consecutive parts) of one rank, as the writer stores
    it: coarser outlines, and what the cross-rank comparison needs (``fingerprints``, ``xhist``,
    ``max_step``, ``skipped_set``).
    """

    def __init__(self, primary: int, part: bool = False) -> None:
        self.primary = primary
        self.part = part
        self._limit = PART_LIMIT if part else None
        self.rows = 0
        self.groups: dict[tuple[int, int, int], GroupStats] = {}
        self.curves: dict[tuple[int, int], Envelope] = {}
        self.rank_curves: dict[tuple[int, int, int], Envelope] = {}  # other ranks: (rank, optimizer, group)
        self._curve_ranks: set[int] = set()
        self.step_time: dict[int, Series] = collections.defaultdict(lambda: Series(self._limit))  # optimizer -> outline
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
        # Cross-rank figures (parts only; a full scan leaves them to DuckDB), keyed by optimizer or (optimizer, group):
        self.fingerprints: dict[tuple[int, int], int] = {}  # xor of a hash of each (step, LR) pair
        self.xhist: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}  # step time, data wait: log2 bins, counts
        self.max_step: dict[int, int] = {}
        self.skipped_set: dict[int, np.ndarray] = {}  # distinct skipped steps

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
        if self.part:
            self._cross(slices, steps, lrs)
        for k, sl in slices:
            stats = self.groups.get((rank, *k))
            if stats is None:
                stats = self.groups[(rank, *k)] = GroupStats()
            stats.add(steps[sl], lrs[sl])
            if primary:
                self.curves.setdefault(k, Envelope(self._limit)).add(steps[sl], lrs[sl])
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

    def _cross(self, slices, steps: np.ndarray, lrs: np.ndarray) -> None:
        """Per (optimizer, group): the schedule's fingerprint and the largest step (for the cross-rank comparison)."""
        for (o, g), sl in slices:
            if o < 0:
                continue
            s, lr = steps[sl], lrs[sl]
            self.fingerprints[(o, g)] = self.fingerprints.get((o, g), 0) ^ _fingerprint(s, lr)
            valid = s[s >= 0]
            if len(valid):
                self.max_step[o] = max(self.max_step.get(o, -1), int(valid.max()))

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
            if self.part and k >= 0:
                for kind, v in (("dur_ns", d), ("data_wait_ns", w)):
                    v = v[v >= 0]
                    if len(v):
                        bins = np.floor(np.log2(np.maximum(v, 1).astype(np.float64)) * XSUB).astype(np.int64)
                        self.xhist[(k, kind)] = _hist_add(self.xhist.get((k, kind)), *np.unique(bins, return_counts=True))
            if cuda is not None:
                dists["cuda_ns"].add(cuda[m])
            timed = i >= 0
            sums = self.sums[k]
            sums[0] += int(d[timed].sum())
            sums[1] += int(i[timed].sum())
            sums[2] += int(w[timed & (w >= 0)].sum())
            sums[3] += int((w[timed] >= 0).sum())
            by = i if timed.any() else d
            s = steps[m]
            top = np.arange(len(by))
            if len(by) > 5:  # the five largest (by, step, dur, wait), ties included: any split of the rows agrees
                top = np.flatnonzero(by >= np.partition(by, -5)[-5])
                top = top[np.lexsort((w[top], d[top], s[top], by[top]))[-5:]]
            cand = self.slowest[k] + [(int(by[j]), int(s[j]), int(d[j]), int(w[j])) for j in top]
            self.slowest[k] = sorted(cand, reverse=True)[:5]
        return seq, o, steps

    def _skipped(self, rank: int, primary: bool, c: Columns, idx: np.ndarray) -> None:
        if self.part:
            o, st = c.take("optimizer", idx, -1), c.take("step", idx, -1)
            for k in np.unique(o[o >= 0]).tolist():
                steps = np.unique(st[(o == k) & (st >= 0)])
                self.skipped_set[k] = np.union1d(self.skipped_set.get(k, steps[:0]), steps)
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



    # -- merging and storing
    def merge(self, parts: list[Scan], detail: bool = True) -> None:
        """Add the summaries of the next parts of this scan's rank (the primary), in recording order
        (``detail=False``: only the counts and the cross-rank figures)."""
        outlines: dict = collections.defaultdict(list)
        for p in parts:
            self._merge_one(p, detail)
            if detail:
                for k, env in p.curves.items():
                    outlines[("curve", k)].append(env)
                for o, ser in p.step_time.items():
                    outlines[("time", o)].append(ser)
        for (kind, k), items in outlines.items():  # at once: one reduction instead of one per part
            if kind == "curve":
                self.curves.setdefault(k, Envelope(self._limit)).merge(*items)
            else:
                self.step_time[k].merge(*items)

    def _merge_one(self, p: Scan, detail: bool) -> None:
        r = self.primary
        self.rows += p.rows
        self._merge_counts(r, p)
        for k, fp in p.fingerprints.items():
            self.fingerprints[k] = self.fingerprints.get(k, 0) ^ fp
        for k, h in p.xhist.items():
            self.xhist[k] = _hist_add(self.xhist.get(k), *h)
        for o, st in p.max_step.items():
            self.max_step[o] = max(self.max_step.get(o, st), st)
        for o, a in p.skipped_set.items():
            self.skipped_set[o] = np.union1d(self.skipped_set.get(o, a[:0]), a)
        if not detail:
            return
        for k, smp in p.samples.items():
            self.inexact |= smp.halved  # the halving points of a scan are unknown
            dst = self.samples.setdefault(k, Samples())
            for j in range(len(smp.cols["step"])):
                dst.add({name: v[j] for name, v in smp.cols.items()})
        for o, steps in p.skipped_steps.items():
            dst = self.skipped_steps[o]
            dst.extend(steps[:max(0, MAX_MARKS - len(dst))])
        for o, dists in p.timing.items():
            for name, d in dists.items():
                self.timing[o][name].merge(d)
        for o, sums in p.sums.items():
            self.sums[o] = [a + b for a, b in zip(self.sums[o], sums)]
        for o, top in p.slowest.items():
            self.slowest[o] = sorted(self.slowest[o] + top, reverse=True)[:5]
        self.sched_dur.merge(p.sched_dur)
        self.zero_dur.merge(p.zero_dur)
        for loader, at in p.epochs:
            if len(self.epochs) < MAX_MARKS:
                self.epochs.append((loader, {**self.last_step, **at}))
        self.last_step.update(p.last_step)

    def _merge_counts(self, rank: int, p: Scan) -> None:
        for (_, o, g), st in p.groups.items():
            self.groups.setdefault((rank, o, g), GroupStats()).merge(st)
        for (_, o), n in p.skipped.items():
            self.skipped[(rank, o)] += n
        for (_, i), n in p.sched_steps.items():
            self.sched_steps[(rank, i)] += n

    def take_rank(self, rank: int, r: Scan) -> None:
        """Add every part of ``rank``, merged into ``r`` (a scan whose primary is ``rank``)."""
        self.rows += r.rows
        self._merge_counts(rank, r)
        if rank == self.primary:
            for name in ("curves", "step_time", "samples", "skipped_steps", "timing", "sums", "slowest",
                         "sched_dur", "zero_dur", "last_step", "epochs"):
                setattr(self, name, getattr(r, name))
            return
        for (o, g), env in sorted(r.curves.items()):
            if rank in self._curve_ranks or len(self._curve_ranks) < MAX_RANK_CURVES:
                self._curve_ranks.add(rank)
                self.rank_curves[(rank, o, g)] = env

    inexact = False
    detailed = True

    def exact(self, primary: bool = True) -> bool:
        """Whether the summaries merged here give what a scan of the rows gives: everything for the
        primary rank; for another, what a report keeps of it (counts and LR outlines)."""
        if not primary:
            return all(e.exact for e in self.curves.values())
        dists = [self.sched_dur, self.zero_dur, *(d for ds in self.timing.values() for d in ds.values())]
        return (not self.inexact and all(e.exact for e in [*self.curves.values(), *self.step_time.values()])
                and all(d.exact for d in dists))

    def state(self) -> dict:
        """The summary of a part as plain JSON data (arrays packed), for ``SUMMARY_KEY``."""
        return {
            "version": SUMMARY_VERSION, "rows": self.rows,
            "groups": [[o, g, *st.state()] for (_, o, g), st in self.groups.items()],
            "curves": [[o, g, *e.state()] for (o, g), e in self.curves.items()],
            "step_time": [[o, *e.state()] for o, e in self.step_time.items()],
            "samples": [[o, g, smp.halved, {k: _pack(v) for k, v in smp.arrays().items()}]
                        for (o, g), smp in self.samples.items()],
            "skipped": [[o, n] for (_, o), n in self.skipped.items()],
            "skipped_steps": [[o, _pack(np.array(v, np.int64))] for o, v in self.skipped_steps.items()],
            "sched_steps": [[i, n] for (_, i), n in self.sched_steps.items()],
            "timing": [[o, {k: d.state() for k, d in ds.items()}] for o, ds in self.timing.items()],
            "sums": [[o, v] for o, v in self.sums.items()],
            "slowest": [[o, [list(t) for t in v]] for o, v in self.slowest.items()],
            "sched_dur": self.sched_dur.state(), "zero_dur": self.zero_dur.state(),
            "last_step": [[o, v] for o, v in self.last_step.items()],
            "epochs": [[loader, [[o, v] for o, v in at.items()]] for loader, at in self.epochs],
            "fingerprints": [[o, g, fp] for (o, g), fp in self.fingerprints.items()],
            "xhist": [[o, kind, _pack(bins), _pack(counts)] for (o, kind), (bins, counts) in self.xhist.items()],
            "max_step": [[o, v] for o, v in self.max_step.items()],
            "skipped_set": [[o, _pack(v.astype(np.int64))] for o, v in self.skipped_set.items()],
        }

    @classmethod
    def from_state(cls, d: dict, detail: bool = True, cross: bool = True) -> Scan:
        """A part's summary back from ``state()``; raises on anything malformed (the footer is untrusted).
        ``detail=False``: only what ``merge(detail=False)`` uses; ``cross=False``: no cross-rank figures."""
        if d.get("version") != SUMMARY_VERSION:
            raise ValueError("unknown summary version")
        p = cls(0, part=True)
        p.rows = _int(d["rows"])
        for o, g, *st in d["groups"]:
            p.groups[(0, _int(o), _int(g))] = GroupStats.from_state(st)
        p.skipped.update({(0, _int(o)): _int(n) for o, n in d["skipped"]})
        p.sched_steps.update({(0, _int(i)): _int(n) for i, n in d["sched_steps"]})
        if cross:
            p.fingerprints = {(_int(o), _int(g)): _int(fp) for o, g, fp in d["fingerprints"]}
            for o, kind, bins, counts in d["xhist"]:
                bins, counts = _unpack(bins, np.int64), _unpack(counts, np.int64)
                if len(bins) != len(counts) or (bins[1:] <= bins[:-1]).any():
                    raise ValueError("bad histogram")
                p.xhist[(_int(o), str(kind))] = bins, counts
            p.max_step = {_int(o): _int(v) for o, v in d["max_step"]}
            p.skipped_set = {_int(o): _unpack(v, np.int64) for o, v in d["skipped_set"]}
        if not detail:
            return p
        for o, g, *st in d["curves"]:
            p.curves[(_int(o), _int(g))] = Envelope.from_state(st, PART_LIMIT)
        for o, *st in d["step_time"]:
            p.step_time[_int(o)] = Series.from_state(st, PART_LIMIT)
        for o, g, halved, cols in d["samples"]:
            smp = p.samples[(_int(o), _int(g))] = Samples()
            smp.halved = bool(halved)
            arrays = {k: _unpack(cols[k], np.int64 if k == "step" else np.float64) for k in ("step", "lr", *SAMPLED)}
            if len({len(a) for a in arrays.values()}) != 1:
                raise ValueError("bad samples")
            smp.add(arrays)
        for o, v in d["skipped_steps"]:
            p.skipped_steps[_int(o)] = _unpack(v, np.int64).tolist()
        for o, ds in d["timing"]:
            p.timing[_int(o)].update({k: Dist.from_state(ds[k]) for k in p.timing[_int(o)]})
        for o, v in d["sums"]:
            p.sums[_int(o)] = [_int(x) for x in v][:4]
        for o, v in d["slowest"]:
            p.slowest[_int(o)] = [tuple(_int(x) for x in t) for t in v][:5]
        p.sched_dur, p.zero_dur = Dist.from_state(d["sched_dur"]), Dist.from_state(d["zero_dur"])
        p.last_step = {_int(o): _int(v) for o, v in d["last_step"]}
        p.epochs = [(_int(loader), {_int(o): _int(v) for o, v in at}) for loader, at in d["epochs"]]
        return p


def summarize(table: pa.Table) -> bytes:
    """The summary of one part's rows (every column of the schema, in recording order), as stored
    under ``SUMMARY_KEY`` in its footer."""
    p = Scan(0, part=True)
    table = table.combine_chunks()
    for batch in table.to_batches(max_chunksize=max(1, table.num_rows)):
        p.add(0, batch)
    return dump_summary(p)


def dump_summary(p: Scan) -> bytes:
    return json.dumps(p.state(), separators=(",", ":")).encode()


def load_summary(raw: bytes, detail: bool = True, cross: bool = True) -> Scan:
    return Scan.from_state(json.loads(raw), detail, cross)


def merge_summaries(raws: list[bytes]) -> bytes:
    """The summary of consecutive parts (a merged file) from theirs."""
    p = Scan(0, part=True)
    p.merge([load_summary(raw) for raw in raws])
    return dump_summary(p)


_MAX_ARRAY = 1 << 26


def _pack(a: np.ndarray) -> str:
    """An array as base64 text, compressed (``~`` first: not a base64 character) when it is not tiny."""
    raw = np.ascontiguousarray(a).tobytes()
    if len(raw) <= 256:
        return base64.b64encode(raw).decode("ascii")
    return "~" + base64.b64encode(zlib.compress(raw, 1)).decode("ascii")


def _unpack(text: str, dtype) -> np.ndarray:
    if not text.startswith("~"):
        return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype)
    d = zlib.decompressobj()
    raw = d.decompress(base64.b64decode(text[1:], validate=True), _MAX_ARRAY)
    if d.unconsumed_tail:
        raise ValueError("summary array too large")
    return np.frombuffer(raw, dtype=dtype)


def _least_shift(ids: np.ndarray, limit: int) -> int:
    """A shift that the outline of ``ids`` (steps - 1) needs at least: a bucket of 2**s steps holds at
    most 2**s distinct ones. Starting there saves reducing a long part one halving at a time."""
    if len(ids) <= limit:
        return 0
    if (ids[1:] >= ids[:-1]).all():
        distinct = int(np.count_nonzero(ids[1:] != ids[:-1])) + 1
    else:
        distinct = len(np.unique(ids))
    s = 0
    while distinct > limit << s:
        s += 1
    return s


def _hist_add(cur: tuple[np.ndarray, np.ndarray] | None, bins: np.ndarray, counts: np.ndarray):
    """Two sparse histograms (increasing bins, counts) added."""
    if cur is None:
        return bins, counts
    u, inv = np.unique(np.concatenate([cur[0], bins]), return_inverse=True)
    return u, np.bincount(inv, weights=np.concatenate([cur[1], counts]), minlength=len(u)).astype(np.int64)


def _int(v) -> int:
    if type(v) is not int:
        raise ValueError("not an integer")
    return v


def _shift(v) -> int:
    if type(v) is not int or not 0 <= v < 63:
        raise ValueError("bad shift")
    return v


_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _fingerprint(steps: np.ndarray, lrs: np.ndarray) -> int:
    """The xor of a 64-bit hash (splitmix64's finaliser) of each (step, LR) pair; -0.0 counts as 0.0,
    every NaN as one NaN. Equal schedules have equal fingerprints, in any order of rows."""
    lr = np.where(np.isnan(lrs), np.nan, lrs + 0.0)
    with np.errstate(over="ignore"):
        h = steps.astype(np.int64).view(np.uint64) * _M1 ^ lr.view(np.uint64)
        h ^= h >> np.uint64(30)
        h *= _M2
        h ^= h >> np.uint64(27)
        h *= _M3
        h ^= h >> np.uint64(31)
    return int(np.bitwise_xor.reduce(h)) if len(h) else 0
