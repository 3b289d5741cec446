"""The rules over a stored trace: rebuild each rank's events from its rows and feed the same engine
as live, then compare the ranks."""

from __future__ import annotations

from typing import Any, Iterator

from ..tracefile import read_trace
from ..tracefile.schema import ADD_PARAM_GROUP, GET_LR_CALL, OPTIMIZER_STEP, SCHEDULER_INIT, SCHEDULER_STEP, Event
from .engine import Checker
from .finding import Finding
from .ranks import rank_findings
from .state import as_int

_COLUMNS = ["rank", "seq", "t_ns", "event", "optimizer", "scheduler", "group", "step", "lr", "file", "line",
            "origin", "parent", "value", "grad", "loader", "framework_site"]


def attach_frameworks(found: list[Finding], frameworks: dict[tuple, str]) -> list[Finding]:
    """Name the framework frame behind a finding's call site, when a framework made the call:
    ``frameworks`` maps (file, line, event) to it; the finding's code says which event it is about."""
    for f in found:
        if f.framework is None and f.file is not None:
            event = _CODE_EVENTS.get(f.code, OPTIMIZER_STEP)
            f.framework = frameworks.get((f.file, f.line, event))
            if f.framework is None:  # the code's event made elsewhere: any framework call from that line
                f.framework = next((fw for (file, line, _), fw in frameworks.items()
                                    if (file, line) == (f.file, f.line)), None)
    return found


_CODE_EVENTS = {
    "scheduler-before-optimizer": SCHEDULER_STEP, "scheduler-multiple-steps": SCHEDULER_STEP,
    "epoch-scheduler-stepped-per-batch": SCHEDULER_STEP, "scheduler-orphaned": SCHEDULER_STEP,
    "multiple-schedulers": SCHEDULER_STEP, "scheduler-state-not-restored": SCHEDULER_STEP,
    "scheduler-never-stepped": SCHEDULER_INIT, "get-lr-called": GET_LR_CALL,
    "param-group-added-after-scheduler": ADD_PARAM_GROUP,
}


def _trace_frameworks(table) -> dict[tuple, str]:
    if "framework_site" not in table.column_names or table.column("framework_site").null_count == len(table):
        return {}
    import pyarrow.compute as pc

    cols = ("file", "line", "event", "framework_site")
    rows = table.filter(pc.is_valid(table.column("framework_site"))).select(list(cols))
    out: dict[tuple, str] = {}
    for file, line, event, fw in zip(*(rows.column(c).to_pylist() for c in cols)):
        out[(file, line, event)] = fw  # the last call, as live
    return out


def _pylist(table, name: str) -> list:
    """A column as Python values (None for nulls), built with numpy rather than value by value."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if name not in table.column_names:
        return [None] * n
    col = table.column(name).combine_chunks()
    if pa.types.is_dictionary(col.type):
        words = np.array(col.dictionary.to_pylist() + [None], dtype=object)
        return words[col.indices.fill_null(len(words) - 1).to_numpy(zero_copy_only=False)].tolist()
    values = np.array(col.fill_null(0).to_numpy(zero_copy_only=False), dtype=object)
    if col.null_count:
        values[pc.is_null(col).to_numpy(zero_copy_only=False)] = None
    return values.tolist()


def events_from_table(table) -> Iterator[Event]:
    """Rebuild the Events of one rank from its rows (one row per param group for per-group events)."""
    import numpy as np

    if not table.num_rows:
        return
    table = table.sort_by([("seq", "ascending"), ("group", "ascending")])
    seq_np = table.column("seq").to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], seq_np[1:] != seq_np[:-1]))).tolist()
    ends = starts[1:] + [table.num_rows]
    event, opt, sched, step, lr, file, line, origin, parent, value, grad, group, loader = (
        _pylist(table, c) for c in ("event", "optimizer", "scheduler", "step", "lr", "file", "line", "origin",
                                    "parent", "value", "grad", "group", "loader"))
    seq = seq_np.tolist()
    make = Event._make
    empty: tuple = ()
    for i, j in zip(starts, ends):
        if group[i] is None:
            lrs = grads = empty
        elif j == i + 1:
            lrs = (lr[i],)
            grads = empty if grad[i] is None else (grad[i],)
        else:
            lrs = tuple(lr[i:j])
            grads = tuple(grad[i:j])
            if all(g is None for g in grads):
                grads = empty
        yield make((event[i], seq[i], opt[i], sched[i], step[i], lrs, grads, file[i], line[i], origin[i], parent[i],
                    value[i], loader[i], 0, 0))


def check_rank(table, meta: dict[str, Any], status: dict[str, Any] | None = None) -> list[Finding]:
    """Run the engine over the rows of one rank, with that rank's object registry; ``status`` (its
    status file) says how the run ended."""
    checker = Checker()
    checker.world_size = as_int((meta or {}).get("world_size")) or 1
    for key, register in (("optimizers", checker.register_optimizer), ("schedulers", checker.register_scheduler)):
        for info in (meta or {}).get(key) or []:
            if isinstance(info, dict) and as_int(info.get("index")) is not None:
                register(as_int(info["index"]), info)
    for ev in events_from_table(table):
        checker.feed(ev)
    return checker.finish(completed=ended_normally(status))


def ended_normally(status: dict[str, Any] | None) -> bool:
    """A rank's run ended normally: its status says so (``ended``), or, in a trace written before
    ``ended`` existed, it was closed complete. A rank without a status never closed."""
    if not isinstance(status, dict):
        return False
    if "ended" in status:
        return status.get("ended") == "normally"
    return status.get("state") == "closed" and status.get("complete") is True


def check_trace(trace) -> list[Finding]:
    """Findings of a stored trace (a ``tracefile.Trace``), every rank, recomputed with the current rules.

    Ranks of one run usually find the same things: findings with the same code, objects, group and
    call site are merged (first step, largest count).
    """
    import pyarrow.compute as pc

    table = trace.table
    if not {"rank", "seq", "event"} <= set(table.column_names):
        table = read_trace(trace.path, columns=_COLUMNS, ranks=trace.selected).table
    ranks = sorted(set(trace.meta) | {r for r in table.column("rank").unique().to_pylist() if r is not None})
    merged: dict[tuple, Finding] = {}
    for rank in ranks:
        sub = table.filter(pc.equal(table.column("rank"), rank)) if len(ranks) > 1 else table
        for f in check_rank(sub, trace.meta.get(rank, {}), trace.status.get(rank)):
            key = (f.code, f.optimizer, f.scheduler, f.group, f.file, f.line)
            if key in merged:
                m = merged[key]
                m.count = max(m.count, f.count)
                if f.step is not None and (m.step is None or f.step < m.step):
                    m.step = f.step
            else:
                merged[key] = f
    out = attach_frameworks(list(merged.values()), _trace_frameworks(table))
    return out + list(rank_findings(trace))


def findings(path) -> list[Finding]:
    """``lrdebug.findings(path)``: the findings of a stored trace, recomputed with the current rules."""
    return check_trace(read_trace(path, columns=_COLUMNS))
