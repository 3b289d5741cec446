"""The report model: a trace summarised once, as plain data that every renderer reads.

The figures come from one streaming pass over the parts (``scan.py``), so memory stays flat whatever
the length of the run.

Groups are labelled by ``param_group["name"]`` when set, else ``{Optimizer class}/pg{group + 1}``
(Lightning's convention: group 0 is ``pg1``); optimizers after the first carry their index
(``Adam-1/pg1``). The convention lives in ``rules/labels.py``: finding messages name groups the same way. Per-group figures are those of the lowest rank present; other ranks
appear in a cross-rank table.

This module (and everything it imports) never imports torch: a trace can be read without PyTorch.
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..rules import SEVERITY_RANK, labels
from ..rules.finding import merge_stored
from ..tracefile import Trace, TraceError, read_trace
from ..tracefile.reader import find_parts, parse_ranks, short_error
from .crossrank import CrossRank
from .scan import SAMPLED, GroupStats, Scan, Summaries, scan_trace

FULL_SCAN_RANKS = 16
REPORT_VERSION = "1.0"
DEFAULT_DIR = Path("lrdebug-traces")
RECHECK_MAX_ROWS = 250_000
DIFF_RTOL = 1e-12
RATIO_HINT = 1e-3
NO_STEPS = "no optimizer steps were recorded"  # a note; renderers show it once, as a headline


# ------------------------------------------------------------------------------------- findings
def _stored_findings(trace: Trace) -> list[dict[str, Any]]:
    """Findings the recorder stored at the end of each rank's run, merged across ranks."""
    return merge_stored(trace.status)


def _findings(trace: Trace, rows: int, cross=None) -> tuple[list[dict[str, Any]], str]:
    """Recheck the events with the current rules when the trace is small enough; else the stored findings.

    The rule engine rebuilds events in Python (~15 µs a row), so a closed trace above
    ``RECHECK_MAX_ROWS`` keeps the findings its run stored; a trace that was never closed has none
    stored and is rechecked up to ten times that size.
    """
    closed = bool(trace.status) and all(s.get("state") == "closed" for s in trace.status.values())
    try:
        from ..rules import check_trace
    except ImportError:
        return _stored_findings(trace), "recorded"
    if rows > RECHECK_MAX_ROWS * (1 if closed else 10):
        stored, source = _stored_findings(trace), f"recorded (not rechecked: {rows:,} rows)"
        if cross is not None:  # each rank stored its own findings; the comparison of ranks runs here
            from ..rules.ranks import CODE, rank_findings

            try:
                found = rank_findings(trace, con=cross.con, compare=cross.representatives(trace.ranks),
                                      counts=cross.counts, classes=cross.classes(trace.ranks))
            except Exception as exc:  # noqa: BLE001
                return stored, source + f"; ranks not compared ({short_error(exc)})"
            stored = [f for f in stored if f.get("code") != CODE] + [f.to_dict() for f in found]
            source += "; rank-divergence computed across ranks"
        return stored, source
    try:
        return [f.to_dict() for f in check_trace(trace)], "rechecked"
    except Exception as exc:  # noqa: BLE001 - an unreadable event stream still has its recorded findings
        return _stored_findings(trace), f"recorded (recheck failed: {type(exc).__name__}: {short_error(exc)})"


def _sort_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # by severity, then the framework that made the calls (your own loop first), then first step
    return sorted(findings, key=lambda f: (-SEVERITY_RANK.get(f.get("severity"), 0), str(f.get("framework") or ""),
                                           f.get("step") or 0, str(f.get("code"))))


# ------------------------------------------------------------------------------------- the report
def group_label(optimizers: list[dict[str, Any]], opt: int, group: int) -> str:
    """``param_group["name"]`` when set, else ``Adam/pg1`` (group 0): ``rules.labels``, as findings say."""
    info = optimizers[opt] if 0 <= opt < len(optimizers) and isinstance(optimizers[opt], dict) else {}
    groups = info.get("groups") or []
    name = groups[group].get("name") if 0 <= group < len(groups) and isinstance(groups[group], dict) else None
    return labels.group_label(optimizer_label(optimizers, opt), name, group)


def optimizer_label(optimizers: list[dict[str, Any]], opt: int) -> str:
    """``Adam`` for the first optimizer, ``Adam-1``, ``SGD-2`` for later ones (``rules.labels``)."""
    info = optimizers[opt] if 0 <= opt < len(optimizers) and isinstance(optimizers[opt], dict) else {}
    return labels.optimizer_label(info.get("class"), opt)


def _jsonable(v: Any) -> Any:
    """Non-finite floats become strings ("nan", "inf"): JSON has no literal for them."""
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return v


def _iso(ns: Any) -> str | None:
    if not isinstance(ns, (int, float)):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


class Report:
    """The summary of a trace: a rich renderable, with ``to_dict()`` (the JSON contract) and ``to_markdown()``.

    ``Report(path)`` reads the trace at once; ``Report()`` reads the newest trace under
    ``./lrdebug-traces/``. Raises ``TraceError`` for unusable input.
    """

    def __init__(self, path: str | Path | None = None, ranks=None) -> None:
        self.path = Path(path) if path is not None else newest_trace()
        try:
            listed = {r for r, _, _ in find_parts(self.path, parse_ranks(ranks))}
        except (OSError, ValueError):
            listed = set()  # read_trace says what is wrong
        # Up to FULL_SCAN_RANKS ranks every part is scanned too (each rank's curve for the overlays, its
        # last event for the ending); beyond, the lowest rank's alone: memory stays flat in the ranks.
        summaries = Summaries(few=len(listed) <= FULL_SCAN_RANKS, cross=len(listed) > 1)
        trace = read_trace(self.path, columns=[], ranks=ranks, on_part=summaries)
        parts = find_parts(self.path, parse_ranks(ranks))
        self.cross = self.cross_note = None
        all_ranks = set(trace.ranks) | {r for r, _ in trace.parts}
        few = len(all_ranks) <= FULL_SCAN_RANKS
        if len(all_ranks) > 1:
            # Every rank's step counts, LR statistics, schedule fingerprint and step times from the parts'
            # summaries, else in DuckDB; the detail (curves, timing, epochs) of the lowest rank from its parts alone.
            if not trace.uniform:
                self.cross_note = "ranks compared by reading every part (some parts have other column types)"
            else:
                try:
                    cross = CrossRank(trace)
                    merged = summaries.result()
                    complete = summaries.cross and {r for r, _ in trace.parts} <= set(merged)
                    self.cross = cross.from_summaries(merged) if complete else cross.run()
                except Exception as exc:  # noqa: BLE001 - a damaged page: every part read and validated instead
                    self.cross_note = f"ranks compared by reading every part ({short_error(exc)})"
        scan, t_max, read = scan_trace(trace, only_primary=self.cross is not None and not few, summaries=summaries)
        if self.cross is not None:
            for key, st in self.cross.groups.items():
                if key[0] != scan.primary:
                    scan.groups[key] = st
            for key, n in self.cross.skipped.items():
                if key[0] != scan.primary:
                    scan.skipped[key] = n
        if parts and not read and not trace.status:
            raise TraceError(f"{self.path}: no readable part ({'; '.join(trace.skipped[:3])})")
        self.trace = trace
        self.scan = scan
        findings, source = _findings(trace, max(scan.rows, trace.rows), self.cross)
        self.findings = _sort_findings(findings)
        self._add_source_lines(trace)
        self.intended: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # finding index -> group -> curve
        self._intend(trace, scan.primary)
        self._data = self._build(trace, scan, t_max, source, len(parts))

    def _add_source_lines(self, trace: Trace) -> None:
        """Each finding's ``source_line``: the text of its call site, as the recorder stored it."""
        lines: dict[str, str] = {}
        for meta in trace.meta.values():
            sl = meta.get("site_lines") if isinstance(meta, dict) else None
            if isinstance(sl, dict):
                lines.update({str(k): str(v) for k, v in sl.items() if isinstance(v, str)})
        for f in self.findings:
            text = lines.get(f"{f.get('file')}:{f.get('line')}") if f.get("file") else None
            if text:
                f["source_line"] = text

    def _intend(self, trace: Trace, rank: int) -> None:
        """The schedule each finding's code meant, and the damage (``finding["intended"]``)."""
        from ..rules.intended import intended_schedules

        meta = trace.meta.get(rank) or next(iter(trace.meta.values()), {})
        found = intended_schedules(self.path, self.findings, meta, rank, self.epoch_steps)
        for i, (summary, curves) in found.items():
            self.findings[i]["intended"] = summary
            if curves:
                self.intended[i] = curves

    # -- public
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``lrdebug report --format json``."""
        return json.loads(json.dumps(self._data))

    def to_markdown(self) -> str:
        from .renderers.markdown import markdown

        return markdown(self)

    def __rich_console__(self, console, options):
        from .renderers.text import renderables

        yield from renderables(self, options.max_width)

    def fails(self, threshold: str) -> bool:
        """True when a finding at or above ``threshold`` (error|warning|info; never: False) exists."""
        level = SEVERITY_RANK.get(threshold, 99)
        return any(SEVERITY_RANK.get(f.get("severity"), 0) >= level for f in self.findings)

    @property
    def notes(self) -> list[str]:
        return list(self._data["notes"])

    def curves(self, max_points: int | None = None) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
        """Per (optimizer, group): first step of each bucket, min and max LR, bucket size (primary rank)."""
        return {k: env.points(max_points) for k, env in sorted(self.scan.curves.items())}

    def rank_curves(self, max_points: int | None = None) -> dict[tuple[int, int, int], tuple[np.ndarray, ...]]:
        """Per (rank, optimizer, group), every rank's LR outline as ``curves()`` gives the primary's
        (up to ``scan.MAX_RANK_CURVES`` ranks besides the primary)."""
        out = {(self.scan.primary, *k): v for k, v in self.curves(max_points).items()}
        out.update({k: env.points(max_points) for k, env in self.scan.rank_curves.items()})
        return dict(sorted(out.items()))

    def step_time(self, max_points: int | None = None) -> dict[int, dict[str, np.ndarray]]:
        """Per optimizer, the step time over the run (primary rank), in at most 4,096 (or ``max_points``)
        buckets of steps: ``step``, ``steps_per_point`` and the mean and max of ``iter_ns``, ``dur_ns``,
        ``data_wait_ns``."""
        return {o: s.points(max_points) for o, s in sorted(self.scan.step_time.items()) if len(s.ids)}

    def samples(self) -> dict[tuple[int, int], dict[str, np.ndarray]]:
        return {k: s.arrays() for k, s in sorted(self.scan.samples.items())}

    def epoch_steps(self, optimizer: int) -> list[int]:
        """Steps of ``optimizer`` at which an epoch of the busiest DataLoader started (0: before any step)."""
        by_loader = collections.Counter(loader for loader, _ in self.scan.epochs)
        if not by_loader:
            return []
        loader = min(by_loader, key=lambda k: (-by_loader[k], k))
        return [at.get(optimizer, 0) for ld, at in self.scan.epochs if ld == loader]

    def label(self, optimizer: int, group: int) -> str:
        return group_label(self._optimizers_meta, optimizer, group)

    # -- building the summary
    def _build(self, trace, scan: Scan, t_max, source: str, parts: int) -> dict[str, Any]:
        primary = scan.primary
        meta = trace.meta.get(primary) or next(iter(trace.meta.values()), {})
        meta = meta if isinstance(meta, dict) else {}
        opts_meta = [o for o in meta.get("optimizers") or [] if isinstance(o, dict)]
        self._optimizers_meta = opts_meta
        status = [{"rank": r, "state": s.get("state"), "complete": bool(s.get("complete")), "reason": s.get("reason")}
                  for r, s in sorted(trace.status.items())]
        for r in trace.ranks:
            if r not in trace.status:
                status.append({"rank": r, "state": None, "complete": False, "reason": "no status file"})
        for s in status:
            if s["state"] == "running":
                s["reason"] = "the process ended without closing the trace (killed, or still running)"
        status.sort(key=lambda s: s["rank"])
        _how_ranks_ended(status, trace, scan, t_max)
        end = (trace.status.get(primary) or {}).get("end_unix_ns") or t_max.get(primary)
        start = meta.get("start_unix_ns")
        argv = [str(a) for a in meta.get("argv") or []]

        notes = []
        if trace.skipped:
            notes += [f"skipped unreadable part {s}" for s in trace.skipped]
        if not any(r == primary for r, *_ in scan.groups):
            notes.append(NO_STEPS)
        if self.cross_note:
            notes.append(self.cross_note)

        optimizers = []
        opt_indices = sorted({o for r, o, _ in scan.groups if r == primary} | set(range(len(opts_meta))))
        for o in opt_indices:
            info = opts_meta[o] if o < len(opts_meta) else {}
            gidx = sorted({g for r, oo, g in scan.groups if r == primary and oo == o}
                          | set(range(len(info.get("groups") or []))))
            groups = []
            for g in gidx:
                st = scan.groups.get((primary, o, g)) or GroupStats()
                names = info.get("groups") or []
                name = names[g].get("name") if g < len(names) and isinstance(names[g], dict) else None
                groups.append({
                    "index": g, "name": name, "label": group_label(opts_meta, o, g), "steps": st.steps,
                    "skipped": scan.skipped.get((primary, o), 0), "first_step": st.first_step,
                    "last_step": st.last_step, "first_lr": st.first_lr, "min_lr": st.min_lr, "max_lr": st.max_lr,
                    "last_lr": st.last_lr, "nonfinite_lr": st.nonfinite,
                    "updates": self._updates(o, g),
                })
            entry = {"index": o, "class": info.get("class"), "label": optimizer_label(opts_meta, o),
                     "steps": max([gr["steps"] for gr in groups] or [0]),
                     "skipped": scan.skipped.get((primary, o), 0), "groups": groups}
            if len(trace.ranks) > 1:
                entry["ranks"] = [self._rank_entry(scan, r, o, gidx) for r in trace.ranks]
            optimizers.append(entry)

        schedulers = []
        for s in meta.get("schedulers") or []:
            if not isinstance(s, dict):
                continue
            i = s.get("index", len(schedulers))
            schedulers.append({"index": i, "class": s.get("class"), "optimizer": s.get("optimizer"),
                               "steps": scan.sched_steps.get((primary, i), 0), "children": s.get("children") or []})
        known = {s["index"] for s in schedulers}
        for (r, i), n in sorted(scan.sched_steps.items()):
            if r == primary and i not in known:
                schedulers.append({"index": i, "class": None, "optimizer": None, "steps": n, "children": []})

        timing = {"optimizers": [], "scheduler_step_ns": scan.sched_dur.to_dict(), "zero_grad_ns": scan.zero_dur.to_dict()}
        for o in sorted(scan.timing):
            d = scan.timing[o]
            dur, it, wait, waits = scan.sums[o]
            timing["optimizers"].append({
                "optimizer": o, "dur_ns": d["dur_ns"].to_dict(), "iter_ns": d["iter_ns"].to_dict(),
                "data_wait_ns": d["data_wait_ns"].to_dict(), "cuda_ns": d["cuda_ns"].to_dict(),
                "step_share": dur / it if it else None,
                "data_wait_share": wait / it if it and waits else None,
                # step(closure) (Lightning): the step's time includes the forward and backward passes
                "step_closure": bool((opts_meta[o] if o < len(opts_meta) else {}).get("step_closure")),
                "slowest": [{"step": s, "iter_ns": i if i >= 0 else None, "dur_ns": du,
                             "data_wait_ns": w if w >= 0 else None} for i, s, du, w in scan.slowest[o]],
            })

        epochs = collections.Counter(loader for loader, _ in scan.epochs)
        data = {
            "schema_version": REPORT_VERSION,
            "trace": {
                "path": str(self.path), "schema_version": meta.get("schema_version"),
                "script": argv[0] if argv else None, "argv": argv, "cwd": meta.get("cwd"),
                "host": meta.get("host"), "start_unix_ns": start, "start": _iso(start),
                "duration_s": (end - start) / 1e9 if isinstance(end, int) and isinstance(start, int) else None,
                "lrdebug_version": meta.get("lrdebug_version"), "torch_version": meta.get("torch_version"),
                "python_version": meta.get("python_version"), "world_size": meta.get("world_size"),
                "frameworks": {str(k): str(v) for k, v in (meta.get("frameworks") or {}).items()}
                if isinstance(meta.get("frameworks"), dict) else {},
                "sample_updates": meta.get("sample_updates"),
                "complete": bool(status) and all(s["complete"] for s in status) and not trace.skipped,
                "status": status, "rows": scan.rows, "parts": parts, "skipped_parts": list(trace.skipped),
                "primary_rank": primary, "ending": _ending(status),
            },
            "ranks": trace.ranks,
            "optimizers": optimizers,
            "schedulers": schedulers,
            "findings": self.findings,
            "findings_source": source,
            "timing": timing,
            "epochs": {"loaders": dict(sorted(epochs.items())), "count": max(epochs.values(), default=0)},
            "notes": notes,
        }
        if self.cross is not None:
            data.update(self.cross.story(trace.ranks, lambda o, g: group_label(opts_meta, o, g)))
        return _jsonable(data)

    def _updates(self, o: int, g: int) -> dict[str, Any] | None:
        s = self.scan.samples.get((o, g))
        if s is None or not s.n:
            return None
        a = s.arrays()
        out: dict[str, Any] = {"samples": int(len(a["step"])), "first_step": int(a["step"][0]),
                               "last_step": int(a["step"][-1])}
        for c in ("lr", *SAMPLED):
            v = a.get(c)
            if v is None:
                continue
            finite = v[np.isfinite(v)]
            out[c] = {"first": float(v[0]), "median": float(np.median(finite)) if len(finite) else None,
                      "last": float(v[-1])}
        ratio = (out.get("update_ratio") or {}).get("median")
        if ratio is not None:
            out["ratio_hint"] = ("high" if ratio > 10 * RATIO_HINT else "low" if ratio < RATIO_HINT / 10
                                 else "typical")
        return out

    def _rank_entry(self, scan: Scan, r: int, o: int, gidx: list[int]) -> dict[str, Any]:
        stats = [scan.groups.get((r, o, g)) for g in gidx]
        return {"rank": r, "steps": max([s.steps for s in stats if s] or [0]), "skipped": scan.skipped.get((r, o), 0),
                "last_lr": [s.last_lr if s else None for s in stats]}


def _how_ranks_ended(status: list[dict[str, Any]], trace, scan: Scan, t_max: dict[int, int]) -> None:
    """Add to each rank's status entry how it ended (the status file's ``ended``; None when the
    process never closed the trace), the last optimizer step its record holds and the time of its
    last recorded event."""
    for s in status:
        r = s["rank"]
        raw = trace.status.get(r) or {}
        ended = raw.get("ended") if s["state"] == "closed" else None
        s["ended"] = ended if isinstance(ended, str) else None
        s["closed"] = s["state"] == "closed"
        steps = [st.last_step for (rr, _, _), st in scan.groups.items() if rr == r and st.last_step is not None]
        s["last_step"] = max(steps) if steps else None
        s["last_event_unix_ns"] = t_max.get(r)


def _ending(status: list[dict[str, Any]]) -> list[str]:
    """How the run ended, one sentence per point, when it did not end normally everywhere: which rank
    ended without closing its trace and where its record stops, which ended by an exception or a
    signal, which stopped first. Empty for a run whose ranks all ended normally."""
    def at(s: dict[str, Any]) -> str:
        return f"its record stops at step {s['last_step']}" if s.get("last_step") is not None else "no optimizer step recorded"

    lines = []
    for s in status:
        if not s.get("closed"):
            lines.append(f"rank {s['rank']} ended without closing its trace (killed, crashed, or still running); {at(s)}")
        elif s.get("ended") and s["ended"] != "normally":
            lines.append(f"rank {s['rank']} ended by {s['ended']}; {at(s)}")
    timed = [s for s in status if isinstance(s.get("last_event_unix_ns"), int)]
    if lines and len(timed) > 1:
        first = min(timed, key=lambda s: (s["last_event_unix_ns"], s["rank"]))
        gap = min(s["last_event_unix_ns"] for s in timed if s is not first) - first["last_event_unix_ns"]
        if gap > 0:
            lines.append(f"rank {first['rank']} stopped first: its last event is {gap / 1e9:.2f} s before any other rank's")
    return lines


def newest_trace(root: Path = DEFAULT_DIR) -> Path:
    """The most recently modified trace directory under ``./lrdebug-traces/``."""
    try:
        candidates = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        candidates = []
    if not candidates:
        raise TraceError(f"no trace given and none found under ./{root}/ (record one: lrdebug run train.py)")
    return max(candidates, key=lambda p: (p.stat().st_mtime_ns, p.name))


