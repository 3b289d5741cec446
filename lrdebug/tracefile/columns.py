"""Buffered event rows -> Arrow columns of the trace schema (the writer thread's half of a flush).

The recorder keeps optimizer steps as flat values (STEP_FIELDS per step) and every other event as a
row tuple (layout below); these functions expand them per param group into the columns of
``schema.SCHEMA``. A value that lives on a device arrives as an object with ``resolve()``: it is read
here, off the training thread. This module never imports torch.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

from .schema import OPTIMIZER_STEP, SCHEMA

_SCHEMA_TYPES = {f.name: f.type for f in SCHEMA}
# An optimizer step's values in the recorder's step buffer, STEP_FIELDS per step:
# event, seq, t0, dur, opt, step, site, lrs, grads, iter_ns, data_wait, extra
STEP_FIELDS = 12
# Row tuple layout of every other event (kept free of lists and dicts so the GC does not scan it):
# (event, seq, t0, dur, opt, sched, step, site, lrs, grads, origin, parent, value, loader,
#  iter_ns, data_wait, thread, extra)
_NO_GROUPS = (None,)


def _resolve(v: Any) -> Any:
    """A recorded value; a device value (anything with ``resolve()``) read now."""
    resolve = getattr(v, "resolve", None)
    return v if resolve is None else resolve()


def columns_from_rows(step_values: list, other_rows: list[tuple], offset_ns: int, rank: int,
                      sites: list[tuple[str, int, str]], frameworks: list[str | None]) -> tuple[dict[str, Any], int]:
    """Expand both buffers (flat step values, other rows) into one column dict of chunked arrays
    (readers sort by seq). ``sites[i]`` is call site i as (file, line, function); ``frameworks[i]`` the
    framework frame behind it, or None."""
    import gc

    was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived tuples: a collection pass here is pure waste
    try:
        parts = []
        if step_values:
            parts.append(expand_steps(step_values, offset_ns, rank, sites, frameworks))
        if other_rows:
            parts.append(expand_rows(other_rows, offset_ns, rank, sites, frameworks))
    finally:
        if was_enabled:
            gc.enable()
    if len(parts) == 1:
        return parts[0]
    (a, na), (b, nb) = parts
    names = set(a) | set(b)
    columns = {}
    for name in names:
        chunks = []
        for cols, n in ((a, na), (b, nb)):
            arr = cols.get(name)
            chunks.append(arr if arr is not None else pa.nulls(n, _SCHEMA_TYPES[name]))
        types = {c.type for c in chunks}
        if len(types) > 1:
            chunks = [c.cast(_SCHEMA_TYPES[name]) for c in chunks]
        columns[name] = pa.chunked_array(chunks)
    return columns, na + nb


def expand_steps(values: list, offset_ns: int, rank: int, sites: list, frameworks: list) -> tuple[dict[str, Any], int]:
    """Optimizer steps (``Recorder.buf``'s flat values) into per-group columns.

    Each column is one strided slice of the flat list (a C-level copy), then one conversion.
    """
    F = STEP_FIELDS
    n = len(values) // F
    lrs = values[7::F]
    total = sum(map(len, lrs))
    uniform = total == n  # one group per step (an optimizer has at least one)
    counts = np.ones(n, dtype=np.int64) if uniform else np.fromiter(map(len, lrs), dtype=np.int64, count=n)
    idx = None if uniform else pa.array(np.repeat(np.arange(n), counts))

    def per_group(arr):
        return arr if uniform else arr.take(idx)

    def ints(i, dtype=np.int64):
        return per_group(pa.array(_int_column(values[i::F], dtype)))

    def maybe(i):
        col = values[i::F]
        nulls = col.count(None)
        if nulls == n:
            return pa.nulls(total, pa.int64())
        if nulls == 0:
            return per_group(pa.array(_int_column(col)))
        return per_group(pa.array(col, type=pa.int64()))

    try:
        lr = pa.array(np.fromiter(itertools.chain.from_iterable(lrs), dtype=np.float64, count=total))
    except (TypeError, ValueError):  # a None (unreadable) or a device value fetched by the writer
        lr = pa.array([_resolve(v) for v in itertools.chain.from_iterable(lrs)], type=pa.float64())
    if uniform:
        group = pa.array(np.zeros(n, dtype=np.int32))
    else:
        group = pa.array((np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32))
    site = _int_column(values[6::F], np.int32)
    file_col, line_col, func_col = _site_columns(site, sites)
    dur = _int_column(values[3::F])
    # t_ns is when the event completed: rows are numbered (seq) at completion, so t_ns is monotone
    # in seq even for nested calls (SequentialLR's children, zero_grad inside an LBFGS closure).
    t_abs = _int_column(values[2::F]) + dur + offset_ns
    events = values[0::F]
    if events.count(OPTIMIZER_STEP) == n:
        event = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([OPTIMIZER_STEP]))
    else:
        event = pa.array(events, pa.string()).dictionary_encode()
    grad_col = values[8::F]
    if uniform and grad_col.count(grad_col[0]) == n:
        grads = np.full(n, grad_col[0][0], dtype=np.int8)
    else:
        grads = np.fromiter(itertools.chain.from_iterable(grad_col), dtype=np.int8, count=total)
    columns: dict[str, Any] = {
        "rank": pa.array(np.full(total, rank, dtype=np.int32)),
        "seq": ints(1),
        "t_ns": per_group(pa.array(t_abs)),
        "event": per_group(event),
        "optimizer": ints(4, np.int32),
        "group": group,
        "step": ints(5),
        "lr": lr,
        "dur_ns": per_group(pa.array(dur)),
        "file": per_group(file_col),
        "line": per_group(line_col),
        "func": per_group(func_col),
        "framework_site": per_group(_framework_column(site, frameworks)),
        "grad": pa.array(grads),
        "iter_ns": maybe(9),
        "data_wait_ns": maybe(10),
    }
    extra = values[11::F]
    if extra.count(None) != n:
        columns.update(_extra_columns(extra, counts, total))
    return columns, total


def _int_column(col: list, dtype=np.int64) -> np.ndarray:
    """A list of ints as an array; one np.full when they are all equal (the optimizer and the call
    site of a steady loop), which costs a C-level count instead of a conversion per value."""
    first = col[0] if col else 0
    if type(first) is int and col[-1] == first and col.count(first) == len(col):
        return np.full(len(col), first, dtype=dtype)
    return np.fromiter(col, dtype=dtype, count=len(col))


def _site_columns(site: np.ndarray, sites: list):
    """file/line/func as dictionary arrays indexed by site id: strings looked up once per site."""
    ids = pa.array(site, mask=site < 0, type=pa.int32())
    sites = sites[: int(site.max()) + 1] if len(site) and site.max() >= 0 else []
    files = pa.DictionaryArray.from_arrays(ids, pa.array([s[0] for s in sites], pa.string()))
    funcs = pa.DictionaryArray.from_arrays(ids, pa.array([s[2] for s in sites], pa.string()))
    lines = pa.array([s[1] for s in sites], pa.int32()).take(ids)
    return files, lines, funcs


def _framework_column(site: np.ndarray, frameworks: list):
    """framework_site as a dictionary array indexed by site id (null for the user's own calls)."""
    labels = frameworks[: int(site.max()) + 1] if len(site) and site.max() >= 0 else []
    has_label = np.array([label is not None for label in labels] + [False], dtype=bool)
    ids = pa.array(site, mask=~has_label[site], type=pa.int32())  # site -1 reads the final False
    return pa.DictionaryArray.from_arrays(ids, pa.array([label or "" for label in labels], pa.string()))


def _extra_columns(extra: list, counts: np.ndarray, total: int) -> dict[str, list]:
    """Sampled update norms and CUDA times, per group, for the rows that have them."""
    per_group = {k: [None] * total for k in ("cuda_ns", "grad_norm", "param_norm", "update_norm",
                                              "update_ratio", "eff_lr")}
    pos = 0
    for e, c in zip(extra, counts.tolist()):
        if e is not None:
            cuda, norms = e
            cuda = _resolve(cuda)
            for g in range(c):
                per_group["cuda_ns"][pos + g] = cuda
                if norms is not None and g < len(norms):
                    gn, pn, un = _resolve(norms[g])
                    per_group["grad_norm"][pos + g] = gn
                    per_group["param_norm"][pos + g] = pn
                    per_group["update_norm"][pos + g] = un
                    per_group["update_ratio"][pos + g] = un / pn if (pn and un is not None) else None
                    per_group["eff_lr"][pos + g] = un / gn if (gn and un is not None) else None
        pos += c
    return {k: pa.array(v, type=_SCHEMA_TYPES[k]) for k, v in per_group.items()}


def expand_rows(rows: list[tuple], offset_ns: int, rank: int, sites: list, frameworks: list) -> tuple[dict[str, Any], int]:
    """Generic event rows (everything but optimizer steps) into per-group columns."""
    n = len(rows)
    (event, seq, t0, dur, opt, sched, step, site, lrs, grads, origin, parent, value, loader, iter_ns, wait,
     thread, extra) = zip(*rows)
    lrs = [_NO_GROUPS if x is None else x for x in lrs]
    counts = np.fromiter(map(len, lrs), dtype=np.int64, count=n)
    total = int(counts.sum())
    idx = pa.array(np.repeat(np.arange(n), counts))

    def col(values, type_):
        return pa.array(values, type=type_).take(idx)

    grouped = np.repeat(np.fromiter(map(_NO_GROUPS.__ne__, lrs), dtype=bool, count=n), counts)
    group = (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)).astype(np.int32)
    flat_lr = [_resolve(v) for v in itertools.chain.from_iterable(lrs)]
    grads = [(None,) * c if g is None else g for g, c in zip(grads, counts.tolist())]
    file_col, line_col, func_col = _site_columns(np.array(site, dtype=np.int32), sites)
    columns: dict[str, Any] = {
        "rank": pa.array(np.full(total, rank, dtype=np.int32)),
        "seq": col(seq, pa.int64()),
        "t_ns": pa.array(np.array(t0, dtype=np.int64) + np.array(dur, dtype=np.int64) + offset_ns).take(idx),
        "event": pa.array(event, pa.string()).dictionary_encode().take(idx),
        "optimizer": col(opt, pa.int32()),
        "scheduler": col(sched, pa.int32()),
        "group": pa.array(group, mask=~grouped),
        "step": col(step, pa.int64()),
        "lr": pa.array(flat_lr, type=pa.float64()),
        "dur_ns": col(dur, pa.int64()),
        "file": file_col.take(idx),
        "line": line_col.take(idx),
        "func": func_col.take(idx),
        "framework_site": _framework_column(np.array(site, dtype=np.int32), frameworks).take(idx),
        "origin": col(origin, pa.string()),
        "parent": col(parent, pa.int32()),
        "value": col(value, pa.float64()),
        "grad": pa.array(list(itertools.chain.from_iterable(grads)), type=pa.int8()),
        "loader": col(loader, pa.int32()),
    }
    if any(e is not None for e in extra):
        columns.update(_extra_columns(list(extra), counts, total))
    return columns, total
