"""``lrdebug diff``: the first step at which two runs' learning rates differ, per optimizer and group."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..tracefile import Trace, read_trace
from ..tracefile.schema import OPTIMIZER_STEP
from .model import _jsonable, group_label

DIFF_RTOL = 1e-12


def _lr_series(path: str) -> tuple[dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], Trace]:
    """Per (optimizer, group) of the lowest rank: the steps and the LR each optimizer step used."""
    trace = read_trace(path, columns=["rank", "event", "optimizer", "group", "step", "lr"])
    t = trace.table
    if t.num_rows:
        t = t.filter(pc.equal(t["event"], OPTIMIZER_STEP))
    if t.num_rows:
        t = t.filter(pc.equal(t["rank"], pc.min(t["rank"])))
    out = {}
    if t.num_rows:
        o, g, steps = (pc.fill_null(t[c], -1).to_numpy() for c in ("optimizer", "group", "step"))
        lrs = t["lr"].to_numpy().astype(np.float64)
        for k in sorted(set(zip(o.tolist(), g.tolist()))):
            m = (o == k[0]) & (g == k[1])
            out[k] = (steps[m], lrs[m])
    return out, trace


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal within DIFF_RTOL (relative), NaN equal to NaN."""
    close = np.abs(a - b) <= DIFF_RTOL * np.maximum(np.abs(a), np.abs(b))
    return close | (a == b) | (np.isnan(a) & np.isnan(b))


def diff_traces(path_a: str, path_b: str, context: int = 2) -> dict[str, Any]:
    """Per optimizer and group: equal, or the first step where the LRs differ, with steps around it."""
    a, trace_a = _lr_series(path_a)
    b, trace_b = _lr_series(path_b)
    meta = next(iter(trace_a.meta.values()), None) or next(iter(trace_b.meta.values()), None) or {}
    opts = [o for o in meta.get("optimizers") or [] if isinstance(o, dict)]
    groups = []
    for k in sorted(set(a) | set(b)):
        entry: dict[str, Any] = {"optimizer": k[0], "group": k[1], "label": group_label(opts, *k)}
        sa, la = a.get(k, (np.empty(0, np.int64), np.empty(0)))
        sb, lb = b.get(k, (np.empty(0, np.int64), np.empty(0)))
        common, ia, ib = np.intersect1d(sa, sb, return_indices=True)
        same = _same(la[ia], lb[ib])
        entry.update(steps_a=len(sa), steps_b=len(sb), compared=len(common), first_diff_step=None)
        if not same.all():
            i = int(np.argmin(same))
            entry.update(first_diff_step=int(common[i]), lr_a=float(la[ia[i]]), lr_b=float(lb[ib[i]]))
            lo, hi = max(0, i - context), min(len(common), i + context + 1)
            entry["context"] = [{"step": int(common[j]), "lr_a": float(la[ia[j]]), "lr_b": float(lb[ib[j]]),
                                 "differs": not bool(same[j])} for j in range(lo, hi)]
        entry["identical"] = entry["first_diff_step"] is None and len(sa) == len(sb) == len(common)
        groups.append(entry)
    return _jsonable({
        "a": str(path_a), "b": str(path_b), "rtol": DIFF_RTOL, "identical": all(g["identical"] for g in groups),
        "groups": groups, "skipped_parts": {"a": trace_a.skipped, "b": trace_b.skipped},
    })


