"""Cross-rank comparison of a distributed run: `rank-divergence` findings.

The ranks of one data-parallel run apply the same schedule, so at each optimizer step they should
have used the same learning rate, and they should end with the same step and skipped-step counts.
Each rank writes its own partition without talking to the others; this comparison happens only
offline, over the merged trace.
"""

from __future__ import annotations

import math
from typing import Any

from ..tracefile.reader import rank_spans
from ..tracefile.schema import OPTIMIZER_STEP, OPTIMIZER_STEP_SKIPPED
from .finding import Finding
from .registry import CODES, define

CODE = "rank-divergence"
define(CODE, "error", "ranks disagree on the LR or step count at the same step", "ranks")
_NEEDED = ["rank", "event", "optimizer", "group", "step", "lr"]
_WANTED = ["rank", "seq", "event", "optimizer", "group", "step", "lr", "file", "line"]
# Ranks run the same scheduler code on the same inputs, so their LRs are bit-identical; the tolerance
# only absorbs a last-digit difference between hosts.
_REL_TOL = 1e-12
_EVENTS = f"event IN ('{OPTIMIZER_STEP}', '{OPTIMIZER_STEP_SKIPPED}')"


def rank_findings(trace, con=None, compare: list[int] | None = None, counts: list[tuple] | None = None,
                  classes: dict | None = None) -> list[Finding]:
    """`rank-divergence` findings of a trace (a ``tracefile.Trace``); none when it has one rank.

    The comparison runs in DuckDB over a view ``events`` (``tracefile.sql``): ``con`` when given (a
    view over the Parquet parts of any number of ranks, as the report builds it), else over the
    trace's rows in memory. Every query is a grouped aggregate; no rank is compared with another in
    Python. ``compare``: the ranks whose LRs can differ (the caller knows that every other rank
    used bit for bit the LRs of one of them, from schedule fingerprints): the per-step comparison
    reads only their partitions, and the ranks on each side are still named from every rank.
    ``counts``: per (optimizer, rank) the last step, the number of skipped steps and the first, when the
    caller has them (from the parts' summaries); else they are counted here. ``classes``: per
    (optimizer, group), each rank of ``compare`` with the ranks that used its LRs at every step: the
    LRs at the first differing step are then read from those ranks alone.
    """
    from ..tracefile.sql import VIEW, connect, table_view

    if con is None:
        table = trace.table
        if not set(_NEEDED) <= set(table.column_names):
            from ..tracefile import read_trace

            table = read_trace(trace.path, columns=_WANTED, ranks=getattr(trace, "selected", None)).table
        con = connect()
        table_view(con, table, _WANTED)
    if counts is not None:  # the caller read every part's footer
        present = {r for r, _ in getattr(trace, "parts", [])}
    else:
        present = {r for (r,) in con.execute(f"SELECT DISTINCT rank FROM {VIEW} WHERE rank IS NOT NULL").fetchall()}
    ranks = sorted(set(trace.ranks) | present)
    if len(ranks) < 2:
        return []
    labels = _Labels(trace.meta, trace.status, ranks)
    return _lr_findings(con, labels, compare, classes) + _count_findings(con, ranks, labels, counts)


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
    return rank_spans(ranks, ", ") if len(ranks) else ""


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def _lr_findings(con, labels: _Labels, compare: list[int] | None = None, classes: dict | None = None) -> list[Finding]:
    """At the same optimizer step, ranks used different LRs (one finding per optimizer and group)."""
    from ..tracefile.sql import VIEW

    only = "" if compare is None else f"AND rank IN ({', '.join(str(int(r)) for r in compare) or 'NULL'})"
    bad = con.execute(f"""
        WITH agg AS (
            SELECT optimizer AS o, coalesce("group", -1) AS g, step,
                   min(lr) FILTER (WHERE NOT isnan(lr)) AS lo, max(lr) FILTER (WHERE NOT isnan(lr)) AS hi,
                   count(*) AS n, count(*) FILTER (WHERE lr IS NULL OR isnan(lr)) AS nans
            FROM {VIEW}
            WHERE event = '{OPTIMIZER_STEP}' AND optimizer IS NOT NULL AND step IS NOT NULL {only}
            GROUP BY ALL)
        SELECT o, g, min(step), count(*) FROM agg
        WHERE (nans > 0 AND nans < n) OR (hi - lo) > {_REL_TOL!r} * greatest(abs(lo), abs(hi))
        GROUP BY o, g ORDER BY o, g""").fetchall()
    findings = []
    for opt, group, first, differ in bad:
        members = (classes or {}).get((opt, group)) if compare is not None else None
        rows = con.execute(f"""
            SELECT rank, lr, file, line FROM {VIEW}
            WHERE event = '{OPTIMIZER_STEP}' AND optimizer = ? AND coalesce("group", -1) = ? AND step = ?
              {only if members else ""}
            ORDER BY rank, seq""", [opt, group, first]).fetchall()
        by_value: dict[str, list[int]] = {}
        for r, lr, _, _ in rows:  # a representative speaks for the ranks that used its LRs
            by_value.setdefault(_fmt(lr), []).extend((members or {}).get(int(r), [int(r)]))
        by_value = {v: sorted(rs) for v, rs in by_value.items()}
        common = max(by_value, key=lambda v: (len(by_value[v]), -min(by_value[v])))
        odd_ranks = sorted(r for v, rs in by_value.items() if v != common for r in rs)
        values = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {rank_list(rs)} used {v}"
                           for v, rs in sorted(by_value.items(), key=lambda kv: min(kv[1])))
        rep = {m: r for r, ms in (members or {}).items() for m in ms}
        odd = rep.get(odd_ranks[0], odd_ranks[0]) if odd_ranks else None
        site = next((row for row in rows if row[0] == odd), (None, None, None, None)) if odd_ranks else rows[0]
        label = labels.group(int(opt), int(group)) if group >= 0 else labels.optimizer(int(opt))
        findings.append(Finding(
            code=CODE, severity=CODES[CODE],
            message=(f"ranks disagree on the learning rate of {label} at step {first}: {values}. "
                     f"{differ} step(s) differ. Data-parallel replicas that apply different LRs "
                     "drift apart; check that every rank builds the same optimizer and scheduler "
                     "(same arguments, same resumed state)."),
            optimizer=int(opt), group=int(group) if group >= 0 else None, step=int(first),
            file=_str(site[2]), line=_int(site[3]), count=int(differ),
        ))
    return findings


def _count_findings(con, ranks: list[int], labels: _Labels, per_rank: list[tuple] | None = None) -> list[Finding]:
    """Ranks ended with different step or skipped-step counts (one finding per optimizer and kind)."""
    from ..tracefile.sql import VIEW

    # Two plain aggregates joined (a DISTINCT over every row of every rank would hold them all).
    per_rank = per_rank if per_rank is not None else con.execute(f"""
        WITH done AS (SELECT optimizer, rank, max(step) AS last FROM {VIEW}
                      WHERE event = '{OPTIMIZER_STEP}' AND optimizer IS NOT NULL AND step IS NOT NULL GROUP BY ALL),
             skip AS (SELECT optimizer, rank, count(DISTINCT step) AS n, min(step) AS first FROM {VIEW}
                      WHERE event = '{OPTIMIZER_STEP_SKIPPED}' AND optimizer IS NOT NULL AND step IS NOT NULL
                      GROUP BY ALL)
        SELECT optimizer, rank, done.last, coalesce(skip.n, 0), skip.first
        FROM done FULL JOIN skip USING (optimizer, rank) ORDER BY ALL""").fetchall()
    by_opt: dict[int, list[tuple]] = {}
    for row in per_rank:
        by_opt.setdefault(int(row[0]), []).append(row[1:])
    findings = []
    for opt, rows in sorted(by_opt.items()):
        done = {int(r): int(d) for r, d, _, _ in rows if d is not None}
        last = {r: done.get(r, 0) for r in ranks}
        if len(set(last.values())) > 1:
            findings.append(_stopped_early(con, opt, last, labels))
        skipped = {int(r): int(n) for r, _, n, _ in rows}
        counts = {r: skipped.get(r, 0) for r in ranks}
        if len(set(counts.values())) > 1:
            by_count: dict[int, list[int]] = {}
            for r, c in counts.items():
                by_count.setdefault(c, []).append(r)
            parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {rank_list(rs)}: {c}"
                              for c, rs in sorted(by_count.items()))
            first = min((int(f) for _, _, _, f in rows if f is not None), default=None)
            findings.append(Finding(
                code=CODE, severity=CODES[CODE],
                message=(f"ranks skipped different numbers of steps of {labels.optimizer(opt)} "
                         f"(AMP GradScaler found inf/NaN on some ranks only): {parts}. The replicas "
                         "applied different updates; gradients or scaler state are not in sync."),
                optimizer=opt, step=first, count=max(counts.values()) - min(counts.values()),
            ))
    return findings


def _stopped_early(con, opt: int, last: dict[int, int], labels: _Labels) -> Finding:
    from ..tracefile.sql import VIEW

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
    site = con.execute(f"""SELECT file, line FROM {VIEW} WHERE {_EVENTS} AND optimizer = ? AND rank = ? AND step = ?
                           ORDER BY seq LIMIT 1""", [opt, first_rank, shortest]).fetchone() or (None, None)
    return Finding(
        code=CODE, severity=CODES[CODE],
        message=(f"ranks recorded different step counts of {labels.optimizer(opt)}: {stops}, while "
                 f"rank{'s' if len(full) > 1 else ''} {rank_list(full)} reached step {top}. A rank that "
                 "stopped early crashed, hung or left the training loop on its own."),
        optimizer=opt, step=shortest, file=_str(site[0]), line=_int(site[1]),
        count=len(early),
    )


def _str(v) -> str | None:
    return v if isinstance(v, str) else None


def _int(v) -> int | None:
    try:
        return None if v is None or math.isnan(float(v)) else int(v)
    except (TypeError, ValueError):
        return None
