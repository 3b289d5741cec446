"""Many ranks as one story, computed in DuckDB over the Parquet parts of every rank.

Per (rank, optimizer, group): step counts, exact LR statistics and a fingerprint of the LR schedule
(the xor of a hash of each (step, LR) pair: equal schedules, equal fingerprints); per rank: step-time
and data-wait distributions (log-histograms, 64 bins per doubling, quantiles within 0.8 %). Ranks with
equal fingerprints, step and skipped counts are one group; every other rank is named with the first
step where its LR differs from the largest group's. No rank is held in Python: each query is one
grouped aggregate that DuckDB runs in parallel within a capped memory. When every part carries its
summary (``tracefile.summary``), those figures are read from the footers instead (``from_summaries``);
DuckDB then only finds the first differing step of the ranks that differ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..rules.ranks import rank_list
from ..tracefile.schema import OPTIMIZER_STEP, OPTIMIZER_STEP_SKIPPED
from ..tracefile.sql import VIEW, connect, parquet_view
from ..tracefile.summary import XSUB, GroupStats

COLUMNS = ["rank", "seq", "event", "optimizer", "group", "step", "lr", "dur_ns", "data_wait_ns", "file", "line"]
SUB = XSUB  # histogram bins per doubling
MAX_DETAIL = 32  # ranks outside the largest group named with their first differing step
SLOWEST = 5


class CrossRank:
    """The cross-rank aggregates of a trace (``run()`` fills them)."""

    def __init__(self, trace) -> None:
        self.trace = trace
        self._con = connect()
        self._viewed = False
        self.groups: dict[tuple[int, int, int], GroupStats] = {}
        self.skipped: dict[tuple[int, int], int] = {}
        self.fingerprints: dict[tuple[int, int, int], int] = {}
        self.timing: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
        self.counts: list[tuple] | None = None  # per (optimizer, rank): last step, skipped steps, first skipped

    def from_summaries(self, merged: dict) -> CrossRank:
        """The same figures from each rank's merged part summaries (``report.scan.Summaries``)."""
        counts = []
        for r, m in sorted(merged.items()):
            self.groups.update({(r, o, g): st for (_, o, g), st in m.groups.items() if o >= 0})
            self.skipped.update({(r, o): n for (_, o), n in m.skipped.items() if o >= 0 and n})
            self.fingerprints.update({(r, o, g): fp for (o, g), fp in m.fingerprints.items()})
            for (o, kind), (bins, n) in sorted(m.xhist.items()):
                self.timing.setdefault((r, o), {})[kind] = _quantiles(bins.tolist(), n.tolist())
            for o in sorted(set(m.max_step) | set(m.skipped_set)):
                skipped = m.skipped_set.get(o, ())
                counts.append((o, r, m.max_step.get(o), len(skipped), int(min(skipped)) if len(skipped) else None))
        self.counts = sorted(counts, key=lambda row: row[:2])
        # DuckDB reads only the ranks whose rows a query needs: one per schedule, and those named in
        # the story with their first differing step (its memory no longer grows with every rank).
        ranks = sorted(merged)
        ordered = self._ordered(ranks)
        self._view(set(self.representatives(ranks)) | {ordered[0][0], *self._detailed(ordered)})
        return self

    @property
    def con(self):
        """The DuckDB connection with the view ``events`` (over every rank unless narrowed)."""
        if not self._viewed:
            self._view()
        return self._con

    def _view(self, ranks: set[int] | None = None) -> None:
        """``events`` over the parts of ``ranks`` (None: every rank)."""
        parts = self.trace.parts if ranks is None else [(r, p) for r, p in self.trace.parts if r in ranks]
        parquet_view(self._con, parts, self.trace.present, COLUMNS)
        self._viewed = True

    def run(self) -> CrossRank:
        self._view()
        rows = self.con.execute(f"""
            SELECT rank, optimizer, coalesce("group", -1) AS g, event, count(*),
                   arg_min(coalesce(lr, 'nan'::DOUBLE), seq), arg_max(coalesce(lr, 'nan'::DOUBLE), seq),
                   arg_min(step, seq), arg_max(step, seq),
                   min(lr) FILTER (WHERE isfinite(lr)), max(lr) FILTER (WHERE isfinite(lr)),
                   count(*) FILTER (WHERE lr IS NULL OR NOT isfinite(lr)), bit_xor(hash(step, lr))
            FROM {VIEW}
            WHERE event IN ('{OPTIMIZER_STEP}', '{OPTIMIZER_STEP_SKIPPED}') AND optimizer >= 0 AND rank IS NOT NULL
            GROUP BY ALL""").fetchall()
        for r, o, g, ev, n, first_lr, last_lr, first_step, last_step, lo, hi, nonfinite, fp in rows:
            if ev == OPTIMIZER_STEP_SKIPPED:
                if g <= 0:
                    self.skipped[(r, o)] = self.skipped.get((r, o), 0) + n
                continue
            st = GroupStats()
            st.steps, st.first_lr, st.last_lr = n, float(first_lr), float(last_lr)
            st.first_step, st.last_step = first_step, last_step
            st.min_lr = math.nan if lo is None else float(lo)
            st.max_lr = math.nan if hi is None else float(hi)
            st.nonfinite = nonfinite
            self.groups[(r, o, g)] = st
            self.fingerprints[(r, o, g)] = fp
        self._timing()
        return self

    def _timing(self) -> None:
        parts = []
        for kind in ("dur_ns", "data_wait_ns"):
            parts.append(f"""SELECT rank, optimizer, '{kind}' AS kind,
                                    CAST(floor(log2(greatest({kind}, 1)) * {SUB}) AS INTEGER) AS b, count(*) AS n
                             FROM {VIEW} WHERE event = '{OPTIMIZER_STEP}' AND "group" = 0 AND {kind} >= 0
                               AND optimizer >= 0 AND rank IS NOT NULL GROUP BY ALL""")
        rows = self.con.execute(" UNION ALL ".join(parts) + " ORDER BY rank, optimizer, kind, b").fetchall()
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and rows[j][:3] == rows[i][:3]:
                j += 1
            r, o, kind = rows[i][:3]
            self.timing.setdefault((r, o), {})[kind] = _quantiles([row[3] for row in rows[i:j]],
                                                                  [row[4] for row in rows[i:j]])
            i = j

    def representatives(self, ranks: list[int]) -> list[int]:
        """One rank per distinct LR schedule (per optimizer and group, the lowest rank with each
        fingerprint): every other rank used bit for bit the LRs of one of these at every step."""
        keep: dict[tuple, int] = {}
        for (r, o, g), fp in self.fingerprints.items():
            if r in ranks:
                key = (o, g, fp)
                keep[key] = min(keep.get(key, r), r)
        return sorted(set(keep.values()))

    def classes(self, ranks: list[int]) -> dict[tuple[int, int], dict[int, list[int]]]:
        """Per (optimizer, group): each representative (``representatives``) with the ranks that used
        bit for bit its LRs at every step."""
        by_fp: dict[tuple[int, int], dict[int, list[int]]] = {}
        for (r, o, g), fp in sorted(self.fingerprints.items()):
            if r in ranks:
                by_fp.setdefault((o, g), {}).setdefault(fp, []).append(r)
        return {k: {min(rs): rs for rs in fps.values()} for k, fps in by_fp.items()}

    # -- the story
    def story(self, ranks: list[int], labels) -> dict[str, Any]:
        """``rank_groups`` (agreeing ranks together, largest first; the others with their first
        differing step) and ``stragglers`` (the five ranks with the slowest optimizer step)."""
        keys = sorted({(o, g) for _, o, g in self.groups})
        ordered = self._ordered(ranks)
        ref = ordered[0][0]
        others = self._detailed(ordered)
        first_diff = self._first_differences(ref, others[:MAX_DETAIL]) if others else {}
        groups = []
        for i, rs in enumerate(ordered):
            steps = {labels(o, g): (self.groups.get((rs[0], o, g)).steps if self.groups.get((rs[0], o, g)) else 0)
                     for o, g in keys}
            entry = {"ranks": rs, "ranks_text": rank_list(rs), "count": len(rs), "steps": steps,
                     "skipped": {str(o): self.skipped.get((rs[0], o), 0) for o in sorted({o for o, _ in keys})}}
            if i:
                diff = {r: first_diff.get(r) for r in rs if r in first_diff}
                entry["lr_differs_from_step"] = min((s for s in diff.values() if s is not None), default=None)
                entry["compared_with_rank"] = ref
            groups.append(entry)
        return {"rank_groups": groups, "stragglers": self.stragglers(ranks)}

    def _ordered(self, ranks: list[int]) -> list[list[int]]:
        """Ranks with equal step counts, schedule fingerprints and skipped steps together, largest group first."""
        keys = sorted({(o, g) for _, o, g in self.groups})
        by_sig: dict[tuple, list[int]] = {}
        for r in ranks:
            sig = tuple((o, g, *(lambda s: (s.steps, s.last_step) if s else (0, None))(self.groups.get((r, o, g))),
                         self.fingerprints.get((r, o, g))) for o, g in keys) + tuple(
                self.skipped.get((r, o), 0) for o in sorted({o for o, _ in keys}))
            by_sig.setdefault(sig, []).append(r)
        return sorted(by_sig.values(), key=lambda rs: (-len(rs), rs[0]))

    @staticmethod
    def _detailed(ordered: list[list[int]]) -> list[int]:
        """The ranks outside the largest group that the story names with their first differing step."""
        return [r for rs in ordered[1:] for r in rs][:MAX_DETAIL]

    def _first_differences(self, ref: int, ranks: list[int]) -> dict[int, int | None]:
        """Per rank, the first optimizer step at which its LR differs (bit for bit) from rank ``ref``'s."""
        listed = ", ".join(str(int(r)) for r in ranks)
        rows = self.con.execute(f"""
            WITH a AS (SELECT rank, optimizer, coalesce("group", -1) AS g, step, lr FROM {VIEW}
                       WHERE event = '{OPTIMIZER_STEP}' AND rank IN ({listed})),
                 b AS (SELECT optimizer, coalesce("group", -1) AS g, step, lr FROM {VIEW}
                       WHERE event = '{OPTIMIZER_STEP}' AND rank = {int(ref)})
            SELECT a.rank, min(a.step) FROM a JOIN b USING (optimizer, g, step)
            WHERE a.lr IS DISTINCT FROM b.lr GROUP BY a.rank""").fetchall()
        out: dict[int, int | None] = {r: None for r in ranks}
        out.update({int(r): int(s) for r, s in rows})
        return out

    def stragglers(self, ranks: list[int]) -> dict[str, Any] | None:
        opts = sorted({o for _, o in self.timing})
        if not opts:
            return None
        def steps(k):
            return sum(t.get("dur_ns", {}).get("n", 0) for (_, kk), t in self.timing.items() if kk == k)

        o = max(opts, key=steps)
        per = []
        for r in ranks:
            t = self.timing.get((r, o))
            if t and "dur_ns" in t:
                per.append({"rank": r, "dur_ns": {k: t["dur_ns"][k] for k in ("p50", "p95")},
                            "data_wait_ns": {k: t["data_wait_ns"][k] for k in ("p50", "p95")} if "data_wait_ns" in t
                            else None})
        if not per:
            return None
        per.sort(key=lambda e: (-e["dur_ns"]["p50"], -e["dur_ns"]["p95"], e["rank"]))
        p50s = sorted(e["dur_ns"]["p50"] for e in per)
        waits = sorted(e["data_wait_ns"]["p50"] for e in per if e["data_wait_ns"])
        return {"optimizer": o, "slowest": per[:SLOWEST],
                "median_rank": {"dur_ns_p50": p50s[len(p50s) // 2],
                                "data_wait_ns_p50": waits[len(waits) // 2] if waits else None},
                "ranks": len(per)}


def _quantiles(bins: list[int], counts: list[int]) -> dict[str, float]:
    """p50, p95 (the middle of their bin) and n of a log2 histogram (bins in increasing order)."""
    bins, counts = np.array(bins), np.cumsum(counts)
    q = {}
    for name, p in (("p50", 0.5), ("p95", 0.95)):
        k = int(np.searchsorted(counts, p * counts[-1]))
        q[name] = float(2.0 ** ((bins[min(k, len(bins) - 1)] + 0.5) / SUB))
    q["n"] = int(counts[-1])
    return q
