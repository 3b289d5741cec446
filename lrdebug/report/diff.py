"""``lrdebug diff``: the first step at which two runs' learning rates differ, per rank, optimizer and group.

Ranks: every rank both traces have is compared (``rank=R`` alone with ``--rank R``); ranks only one
side has are named, not compared. Optimizers are matched by position (the first one recorded in A
with the first in B); where their classes differ, the result says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..tracefile import Trace, TraceError, read_trace
from ..tracefile.schema import OPTIMIZER_STEP
from .model import _jsonable, group_label

DIFF_RTOL = 1e-12
Series = dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]]


def _lr_series(path: str) -> tuple[Series, Trace]:
    """Per (rank, optimizer, group): the steps and the LR each optimizer step used."""
    trace = read_trace(path, columns=["rank", "event", "optimizer", "group", "step", "lr"])
    t = trace.table
    if t.num_rows:
        t = t.filter(pc.equal(t["event"], OPTIMIZER_STEP))
    out = {}
    if t.num_rows:
        r, o, g, steps = (pc.fill_null(t[c], -1).to_numpy() for c in ("rank", "optimizer", "group", "step"))
        lrs = t["lr"].to_numpy().astype(np.float64)
        for k in sorted(set(zip(r.tolist(), o.tolist(), g.tolist()))):
            m = (r == k[0]) & (o == k[1]) & (g == k[2])
            out[k] = (steps[m], lrs[m])
    return out, trace


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal within DIFF_RTOL (relative), NaN equal to NaN."""
    close = np.abs(a - b) <= DIFF_RTOL * np.maximum(np.abs(a), np.abs(b))
    return close | (a == b) | (np.isnan(a) & np.isnan(b))


def _ranks(series: Series, trace: Trace) -> list[int]:
    return sorted({k[0] for k in series} | {int(r) for r in trace.ranks})


def _optimizers(trace: Trace, rank: int) -> list[dict[str, Any]]:
    meta = trace.meta.get(rank) or next(iter(trace.meta.values()), None) or {}
    meta = meta if isinstance(meta, dict) else {}
    return [o for o in meta.get("optimizers") or [] if isinstance(o, dict)]


def _pairs(ranks_a: list[int], ranks_b: list[int], rank: int | None) -> tuple[list[tuple[int, int]], list[str]]:
    """(rank of A, rank of B) to compare, and what the reader must know about the choice."""
    notes = []
    if rank is not None:
        for side, ranks in (("A", ranks_a), ("B", ranks_b)):
            if rank not in ranks:
                raise TraceError(f"--rank {rank}: trace {side} has {_ranks_text(ranks)}")
        return [(rank, rank)], notes
    common = sorted(set(ranks_a) & set(ranks_b))
    if not common:
        if not ranks_a or not ranks_b:
            return [], notes
        pair = (ranks_a[0], ranks_b[0])
        notes.append(f"no rank in common: compared rank {pair[0]} of A with rank {pair[1]} of B")
        return [pair], notes
    only_a, only_b = sorted(set(ranks_a) - set(common)), sorted(set(ranks_b) - set(common))
    if only_a or only_b:
        left = "; ".join(f"{_ranks_text(o)} of {s} not compared" for s, o in (("A", only_a), ("B", only_b)) if o)
        notes.append(f"compared {_ranks_text(common)} (in both traces); {left}")
    return [(r, r) for r in common], notes


def _ranks_text(ranks: list[int]) -> str:
    if not ranks:
        return "no rank"
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(str(r) for r in ranks)}"


def diff_traces(path_a: str, path_b: str, context: int = 2, rank: int | None = None) -> dict[str, Any]:
    """Per compared rank, optimizer and group: equal, or the first step where the LRs differ, with steps
    around it. ``rank``: compare that rank alone (TraceError when a trace lacks it)."""
    a, trace_a = _lr_series(path_a)
    b, trace_b = _lr_series(path_b)
    ranks_a, ranks_b = _ranks(a, trace_a), _ranks(b, trace_b)
    pairs, notes = _pairs(ranks_a, ranks_b, rank)
    groups = []
    mismatched: dict[int, tuple[str, str]] = {}
    for ra, rb in pairs:
        opts_a, opts_b = _optimizers(trace_a, ra), _optimizers(trace_b, rb)
        keys = sorted({k[1:] for k in a if k[0] == ra} | {k[1:] for k in b if k[0] == rb})
        for k in keys:
            cls_a = opts_a[k[0]].get("class") if k[0] < len(opts_a) else None
            cls_b = opts_b[k[0]].get("class") if k[0] < len(opts_b) else None
            label = group_label(opts_a if k[0] < len(opts_a) else opts_b, *k)
            if cls_a and cls_b and cls_a != cls_b:
                label = f"{group_label(opts_a, *k)} vs {group_label(opts_b, *k)}"
                mismatched[k[0]] = (cls_a, cls_b)
            entry: dict[str, Any] = {"rank": ra if ra == rb else None, "rank_a": ra, "rank_b": rb,
                                     "optimizer": k[0], "group": k[1], "label": label,
                                     "class_a": cls_a, "class_b": cls_b}
            sa, la = a.get((ra, *k), (np.empty(0, np.int64), np.empty(0)))
            sb, lb = b.get((rb, *k), (np.empty(0, np.int64), np.empty(0)))
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
    for o, (ca, cb) in sorted(mismatched.items()):
        notes.append(f"optimizer {o} is {ca} in A and {cb} in B: optimizers are matched by position")
    return _jsonable({
        "a": str(path_a), "b": str(path_b), "rtol": DIFF_RTOL, "identical": all(g["identical"] for g in groups),
        "ranks_a": ranks_a, "ranks_b": ranks_b, "rank": rank,
        "ranks_compared": [ra for ra, rb in pairs if ra == rb], "pairs": [list(p) for p in pairs],
        "notes": notes, "groups": groups, "skipped_parts": {"a": trace_a.skipped, "b": trace_b.skipped},
    })
