"""The pandas rank comparison before issue 20 (kept as the reference the DuckDB version must match).

The ranks of one data-parallel run apply the same schedule, so at each optimizer step they should
have used the same learning rate, and they should end with the same step and skipped-step counts.
Each rank writes its own partition without talking to the others; this comparison happens only
offline, over the merged trace.
"""

from __future__ import annotations

import math
from typing import Any

from lrdebug.tracefile.schema import OPTIMIZER_STEP, OPTIMIZER_STEP_SKIPPED
from lrdebug.rules.finding import Finding
from lrdebug.rules.registry import CODES

CODE = "rank-divergence"
_NEEDED = ["rank", "event", "optimizer", "group", "step", "lr"]
_WANTED = _NEEDED + ["file", "line"]
# Ranks run the same scheduler code on the same inputs, so their LRs are bit-identical; the tolerance
# only absorbs a last-digit difference between hosts.
_REL_TOL = 1e-12


def rank_findings(trace) -> list[Finding]:
    """`rank-divergence` findings of a trace (a ``tracefile.Trace``); none when it has one rank."""
    table = trace.table
    if not set(_NEEDED) <= set(table.column_names):
        from lrdebug.tracefile import read_trace

        table = read_trace(trace.path, columns=_WANTED).table
    ranks = sorted(set(trace.ranks) | set(table.column("rank").unique().to_pylist()) - {None})
    if len(ranks) < 2:
        return []
    df = _steps_frame(table)
    labels = _Labels(trace.meta, trace.status, ranks)
    findings = _lr_findings(df, labels) + _count_findings(df, ranks, labels)
    return findings


def _steps_frame(table):
    import pyarrow as pa
    import pyarrow.compute as pc

    names = [c for c in _WANTED if c in table.column_names]
    events = table.column("event")
    if pa.types.is_dictionary(events.type):
        events = events.cast(pa.string())
    mask = pc.is_in(events, value_set=pa.array([OPTIMIZER_STEP, OPTIMIZER_STEP_SKIPPED]))
    sub = table.select(names).filter(mask)
    sub = sub.set_column(names.index("event"), "event", sub.column("event").cast(pa.string()))
    for name in ("file",):
        if name in names and pa.types.is_dictionary(sub.column(name).type):
            sub = sub.set_column(names.index(name), name, sub.column(name).cast(pa.string()))
    return sub.to_pandas()


class _Labels:
    """Names optimizers and groups from the run metadata, and notes ranks whose trace was not closed."""

    def __init__(self, meta: dict[int, dict[str, Any]], status: dict[int, dict[str, Any]], ranks: list[int]):
        self.meta = next((meta[r] for r in ranks if isinstance(meta.get(r), dict)), {})
        self.unclosed = {r for r in ranks if (status.get(r) or {}).get("state") != "closed"}

    def optimizer(self, index: int) -> str:
        opts = self.meta.get("optimizers") or []
        cls = opts[index].get("class") if index < len(opts) and isinstance(opts[index], dict) else None
        return f"optimizer {index} ({cls})" if cls else f"optimizer {index}"

    def group(self, index: int, group: int) -> str:
        opts = self.meta.get("optimizers") or []
        name = None
        if index < len(opts) and isinstance(opts[index], dict):
            groups = opts[index].get("groups") or []
            if group < len(groups) and isinstance(groups[group], dict):
                name = groups[group].get("name")
        return f"{self.optimizer(index)} group {group}" + (f" '{name}'" if name else "")

    def rank(self, r: int) -> str:
        return f"rank {r}" + (" (its trace was never closed: the process died or was killed)" if r in self.unclosed else "")


def rank_list(ranks) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``: readable also for a thousand ranks."""
    ranks = sorted(set(int(r) for r in ranks))
    spans: list[str] = []
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        spans.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ", ".join(spans)


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def _lr_findings(df, labels: _Labels) -> list[Finding]:
    """At the same optimizer step, ranks used different LRs (one finding per optimizer and group)."""
    steps = df[df["event"] == OPTIMIZER_STEP].dropna(subset=["optimizer", "step"])
    if steps.empty:
        return []
    steps = steps.assign(group=steps["group"].fillna(-1), nan=steps["lr"].isna())
    keys = ["optimizer", "group", "step"]
    agg = steps.groupby(keys, sort=True).agg(lo=("lr", "min"), hi=("lr", "max"), n=("lr", "size"),
                                              nans=("nan", "sum"))
    mixed_nan = (agg["nans"] > 0) & (agg["nans"] < agg["n"])
    spread = (agg["hi"] - agg["lo"]) > _REL_TOL * agg[["lo", "hi"]].abs().max(axis=1)
    bad = agg[mixed_nan | spread.fillna(False)]
    findings = []
    for (opt, group), per_group in bad.groupby(level=["optimizer", "group"], sort=True):
        first = int(per_group.index.get_level_values("step")[0])
        rows = steps[(steps["optimizer"] == opt) & (steps["group"] == group) & (steps["step"] == first)]
        by_value: dict[str, list[int]] = {}
        for r, lr in zip(rows["rank"], rows["lr"]):
            by_value.setdefault(_fmt(lr), []).append(int(r))
        common = max(by_value, key=lambda v: (len(by_value[v]), -min(by_value[v])))
        odd_ranks = sorted(r for v, rs in by_value.items() if v != common for r in rs)
        values = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {rank_list(rs)} used {v}"
                           for v, rs in sorted(by_value.items(), key=lambda kv: min(kv[1])))
        site = rows[rows["rank"] == odd_ranks[0]].iloc[0]
        label = labels.group(int(opt), int(group)) if group >= 0 else labels.optimizer(int(opt))
        findings.append(Finding(
            code=CODE, severity=CODES[CODE],
            message=(f"ranks disagree on the learning rate of {label} at step {first}: {values}. "
                     f"{len(per_group)} step(s) differ. Data-parallel replicas that apply different LRs "
                     "drift apart; check that every rank builds the same optimizer and scheduler "
                     "(same arguments, same resumed state)."),
            optimizer=int(opt), group=int(group) if group >= 0 else None, step=first,
            file=_str(site.get("file")), line=_int(site.get("line")), count=len(per_group),
        ))
    return findings


def _count_findings(df, ranks: list[int], labels: _Labels) -> list[Finding]:
    """Ranks ended with different step or skipped-step counts (one finding per optimizer and kind)."""
    findings = []
    clean = df.dropna(subset=["optimizer", "step"])
    for opt in sorted(int(o) for o in clean["optimizer"].unique()):
        rows = clean[clean["optimizer"] == opt]
        done = rows[rows["event"] == OPTIMIZER_STEP].groupby("rank")["step"].max()
        last = {r: int(done.get(r, 0)) for r in ranks}
        if len(set(last.values())) > 1:
            findings.append(_stopped_early(opt, last, rows, labels))
        skipped = rows[rows["event"] == OPTIMIZER_STEP_SKIPPED].groupby("rank")["step"].nunique()
        counts = {r: int(skipped.get(r, 0)) for r in ranks}
        if len(set(counts.values())) > 1:
            by_count: dict[int, list[int]] = {}
            for r, c in counts.items():
                by_count.setdefault(c, []).append(r)
            parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {rank_list(rs)}: {c}"
                              for c, rs in sorted(by_count.items()))
            first = rows[rows["event"] == OPTIMIZER_STEP_SKIPPED]["step"].min()
            findings.append(Finding(
                code=CODE, severity=CODES[CODE],
                message=(f"ranks skipped different numbers of steps of {labels.optimizer(opt)} "
                         f"(AMP GradScaler found inf/NaN on some ranks only): {parts}. The replicas "
                         "applied different updates; gradients or scaler state are not in sync."),
                optimizer=opt, step=_int(first), count=max(counts.values()) - min(counts.values()),
            ))
    return findings


def _stopped_early(opt: int, last: dict[int, int], rows, labels: _Labels) -> Finding:
    top = max(last.values())
    early = sorted(r for r, s in last.items() if s < top)
    shortest = min(last.values())
    first_rank = min(early, key=lambda r: (last[r], r))
    by_step: dict[int, list[int]] = {}
    for r in early:
        by_step.setdefault(last[r], []).append(r)
    stops = "; ".join(
        (labels.rank(rs[0]) if len(rs) == 1 else f"ranks {rank_list(rs)}")
        + (f" stopped after step {s}" if s else " recorded no step")
        for s, rs in sorted(by_step.items())
    )
    full = sorted(r for r, s in last.items() if s == top)
    site = rows[(rows["rank"] == first_rank) & (rows["step"] == shortest)]
    site = site.iloc[0] if len(site) else {}
    return Finding(
        code=CODE, severity=CODES[CODE],
        message=(f"ranks recorded different step counts of {labels.optimizer(opt)}: {stops}, while "
                 f"rank{'s' if len(full) > 1 else ''} {rank_list(full)} reached step {top}. A rank that "
                 "stopped early crashed, hung or left the training loop on its own."),
        optimizer=opt, step=shortest, file=_str(site.get("file")), line=_int(site.get("line")),
        count=len(early),
    )


def _str(v) -> str | None:
    return v if isinstance(v, str) else None


def _int(v) -> int | None:
    try:
        return None if v is None or math.isnan(float(v)) else int(v)
    except (TypeError, ValueError):
        return None
