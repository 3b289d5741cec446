"""The end-of-run summary: one block on stderr per job, printed once.

Who prints: the process the user started (``lrdebug run``, or the script calling ``trace()``); where
a launcher started the ranks (torchrun, Lightning's DDP), local rank 0 alone; a process started by
``lrdebug run``'s start-up hook never. What it covers: every rank partition of the trace it can see,
after waiting a bounded time (``LRDEBUG_SUMMARY_WAIT_S``, default 10 s) for ranks that have not
closed yet, and naming those it did not wait for. The counts come from the findings the ranks stored
in their status files, merged as ``lrdebug report`` merges them (``rules.finding.merge_stored``),
plus the cross-rank comparison (``rank-divergence``) on traces small enough to read at once.
Messages are wrapped to the terminal's width (100 columns when stderr is no terminal), never cut.

Nothing here imports torch, and nothing here may break the run: any failure prints nothing.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterable

from ..rules.finding import SEVERITY_RANK, merge_stored
from ..rules.intended import CODES as INTENDED_CODES
from ..rules.intended import damage_line, intended_schedules
from ..tracefile.schema import read_status

CHILD_PREFIX = "child-"
WAIT_ENV = "LRDEBUG_SUMMARY_WAIT_S"
DEFAULT_WAIT_S = 10.0
SHOWN = 12  # findings listed; the rest are counted
RANK_CHECK_MAX_ROWS = 250_000  # rows read back for the cross-rank comparison, at most
WIDTH_NOT_A_TTY = 100
_POLL_S = 0.05


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v.isdigit() else None


def prints_here() -> bool:
    """True in the one process of a job that prints the summary: local rank 0 where a launcher set
    ``LOCAL_RANK`` (torchrun, Lightning), rank 0 where only ``RANK`` is set, any other process."""
    local = _env_int("LOCAL_RANK")
    if local is not None:
        return local == 0
    rank = _env_int("RANK")
    return rank is None or rank == 0


def wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)))
    except ValueError:
        return DEFAULT_WAIT_S


def width(stream: Any = None) -> int:
    stream = stream if stream is not None else sys.stderr
    try:
        if stream.isatty():
            return max(40, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    return WIDTH_NOT_A_TTY


def _rank_dirs(root: Path) -> dict[int, Path]:
    out = {}
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for e in entries:
        if e.name.startswith("rank=") and e.name[5:].isdigit() and e.is_dir():
            out[int(e.name[5:])] = e
    return out


def _child_traces(root: Path) -> list[Path]:
    try:
        return sorted(e for e in root.iterdir() if e.is_dir() and e.name.startswith(CHILD_PREFIX))
    except OSError:
        return []


def expected_ranks(statuses: dict[int, dict[str, Any]]) -> set[int]:
    """The ranks this job should have, as far as this node can tell without talking to the others:
    every rank of the world on one node; on several nodes, the ranks of this node's block."""
    worlds = [s.get("meta", {}).get("world_size") for s in statuses.values() if isinstance(s.get("meta"), dict)]
    world = max([w for w in worlds if isinstance(w, int)] + [_env_int("WORLD_SIZE") or 1])
    local_world, rank, local = _env_int("LOCAL_WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if local_world is not None and rank is not None and local is not None and local_world < world:
        first = rank - local
        return set(range(first, first + local_world))
    return set(range(world)) if world > 1 else set()


def _closed(status: dict[str, Any] | None) -> bool:
    return isinstance(status, dict) and status.get("state") == "closed"


def collect(root: Path, wait_s: float, clock=time.monotonic, sleep=time.sleep):
    """Statuses of every rank under ``root`` once all have closed, or when ``wait_s`` has passed:
    ``(statuses, missing, running, waited_s)``: ranks expected but without a partition, ranks whose
    partition has not closed."""
    start = clock()
    deadline = start + wait_s
    while True:
        dirs = _rank_dirs(root)
        statuses = {r: read_status(d) for r, d in dirs.items()}
        missing = sorted(expected_ranks({r: s for r, s in statuses.items() if s}) - set(dirs))
        running = sorted(r for r, s in statuses.items() if not _closed(s))
        for child in _child_traces(root):
            for r, d in _rank_dirs(child).items():
                if not _closed(read_status(d)):
                    running.append(f"{child.name}/rank={r}")
        if (not missing and not running) or clock() >= deadline:
            return {r: s for r, s in statuses.items() if s}, missing, running, clock() - start
        sleep(_POLL_S)


def _rank_divergence(root: Path, statuses: dict[int, dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    if len(statuses) < 2:
        return [], None
    rows = sum(s.get("rows") or 0 for s in statuses.values() if isinstance(s.get("rows"), int))
    if rows > RANK_CHECK_MAX_ROWS:
        return [], f"ranks not compared here ({rows:,} rows)"
    try:
        from ..rules.ranks import rank_findings
        from ..tracefile import read_trace

        trace = read_trace(root, columns=["rank", "event", "optimizer", "group", "step", "lr", "file", "line"])
        return [f.to_dict() for f in rank_findings(trace)], None
    except Exception as exc:  # noqa: BLE001 - the stored findings are still worth printing
        return [], f"ranks not compared ({type(exc).__name__})"


LIVE_REPLAY_STEPS = 100_000  # a longer run's intended schedule is left to `lrdebug report` (seconds of replay)


def _damage(root: Path, statuses: dict[int, dict[str, Any]], findings: list[dict[str, Any]]) -> None:
    """Each finding about a built-in scheduler gets the schedule it meant and the damage on the lowest
    rank (``rules/intended.py``), as the report shows it."""
    if not statuses or not any(f.get("code") in INTENDED_CODES for f in findings):
        return
    try:
        rank = min(statuses)
        meta = statuses[rank].get("meta") if isinstance(statuses[rank].get("meta"), dict) else {}
        for i, (intended, _) in intended_schedules(root, findings, meta, rank, max_steps=LIVE_REPLAY_STEPS).items():
            findings[i]["intended"] = intended
    except Exception:  # noqa: BLE001 - the summary is printed without it
        pass


def _ranks_text(ranks: Iterable[Any]) -> str:
    ranks = list(ranks)
    return ", ".join(str(r) for r in ranks)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _counts(findings: list[dict[str, Any]]) -> str:
    by = {sev: sum(1 for f in findings if f.get("severity") == sev) for sev in ("error", "warning", "info")}
    parts = [_plural(n, sev) for sev, n in by.items() if n]
    return ", ".join(parts) if parts else "none"


def _where(f: dict[str, Any]) -> str:
    if not f.get("file"):
        return ""
    path = str(f["file"])
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    except ValueError:
        pass
    where = f" at {path}:{f.get('line')}"
    if f.get("framework"):
        where += f" via {f['framework']}"
    return where


def _wrap(text: str, columns: int, indent: str, then: str | None = None) -> list[str]:
    """``text`` wrapped to ``columns``; a word longer than a line (a path) overflows, never breaks."""
    then = " " * len(indent) if then is None and indent.strip() else indent if then is None else then
    lines = []
    for para in str(text).splitlines() or [""]:
        lines += textwrap.wrap(para, width=max(columns, len(indent) + 20), initial_indent=indent,
                               subsequent_indent=then, break_long_words=False, break_on_hyphens=False) or [indent]
        indent = then
    return lines


def render(root: Path, statuses: dict[int, dict[str, Any]], findings: list[dict[str, Any]], *,
           missing: list[int] = (), running: list[Any] = (), waited_s: float = 0.0, children: list[Path] = (),
           notes: list[str] = (), columns: int = WIDTH_NOT_A_TTY, ignore: Iterable[str] = ()) -> str:
    """The summary's text (no trailing newline)."""
    ignore = set(ignore)
    shown = [f for f in findings if f.get("code") not in ignore]
    shown.sort(key=lambda f: (-SEVERITY_RANK.get(f.get("severity"), 0), f.get("step") or 0, str(f.get("code"))))
    ranks = sorted(statuses)
    incomplete = [(r, s.get("reason")) for r, s in sorted(statuses.items())
                  if _closed(s) and not s.get("complete", True)]
    head = f"lrdebug: trace written to {root}"
    if len(ranks) > 1 or missing or (ranks and ranks != [0]):
        head += f" (rank{'s' if len(ranks) != 1 else ''} {_ranks_text(ranks)})" if ranks else " (no rank recorded)"
    lines = [head]  # not wrapped: the path stays whole on the line, for copying
    for r, reason in incomplete:
        who = "the trace is" if len(statuses) == 1 else f"rank {r} is"
        lines += _wrap(f"{who} incomplete: {reason or 'unknown reason'}", columns, "lrdebug: ")
    if shown:
        scope = f" over ranks {_ranks_text(ranks)}" if len(ranks) > 1 else ""
        lines += _wrap(f"{_plural(len(shown), 'finding')}{scope}: {_counts(shown)}", columns, "lrdebug: ")
        for f in shown[:SHOWN]:
            on = ""
            if len(ranks) > 1 and f.get("ranks") and sorted(f["ranks"]) != ranks:
                on = f", rank{'s' if len(f['ranks']) != 1 else ''} {_ranks_text(sorted(f['ranks']))} only"
            lines += _wrap(f"{f.get('severity', 'info'):7} {f.get('code')}{_where(f)} (x{f.get('count') or 1}{on})",
                           columns, "  ", "          ")
            lines += _wrap(str(f.get("message") or ""), columns, "      ")
            intended = f.get("intended")
            if isinstance(intended, dict) and "unavailable" not in intended:
                for damage in damage_line(intended):
                    lines += _wrap(f"vs intended: {damage}", columns, "      ")
        if len(shown) > SHOWN:
            lines += _wrap(f"... and {len(shown) - SHOWN} more: lrdebug report {root}", columns, "  ")
    else:
        lines += _wrap("no findings" + (f" over ranks {_ranks_text(ranks)}" if len(ranks) > 1 else ""), columns,
                       "lrdebug: ")
    pending = [f"rank {r} (no partition yet)" for r in missing] + [
        f"{r if isinstance(r, str) else f'rank {r}'} (still running)" for r in running]
    if pending:
        lines += _wrap(f"not waited for after {waited_s:.0f} s, so not counted: {', '.join(pending)}; "
                       f"once they end: lrdebug report {root}", columns, "lrdebug: ")
    for note in notes:
        lines += _wrap(note, columns, "lrdebug: ")
    if children:
        described = []
        for child in children:
            child_status = {r: s for r, s in ((r, read_status(d)) for r, d in _rank_dirs(child).items()) if s}
            found = [f for f in merge_stored(child_status) if f.get("code") not in ignore]
            described.append(child.name + (f" ({_counts(found)})" if found else ""))
        more = f" and {len(described) - 8} more" if len(described) > 8 else ""
        plural = len(children) != 1
        lines += _wrap(f"{'processes' if plural else 'a process'} started by the target recorded "
                       f"{'traces' if plural else 'a trace'} of {'their' if plural else 'its'} own: "
                       f"{', '.join(described[:8])}{more}"
                       f"{'' if any('(' in d for d in described) else ' (no findings)'}; "
                       f"lrdebug report {children[0].parent}/{CHILD_PREFIX}<pid>", columns, "lrdebug: ")
    return "\n".join(lines)


def summary_text(root: str | os.PathLike, ignore: Iterable[str] = (), wait_s: float | None = None,
                 columns: int | None = None) -> str:
    root = Path(root)
    statuses, missing, running, waited = collect(root, wait_seconds() if wait_s is None else wait_s)
    findings = merge_stored(statuses, with_ranks=True)
    if running or missing:  # a rank that has not ended would differ in its step count: compare none
        extra, note = [], None
    else:
        extra, note = _rank_divergence(root, statuses)
        _damage(root, statuses, findings)
    for f in extra:
        f["ranks"] = sorted(statuses)
    return render(root, statuses, findings + extra, missing=missing, running=running, waited_s=waited,
                  children=_child_traces(root), notes=[note] if note else [],
                  columns=width() if columns is None else columns, ignore=ignore)


def print_summary(root: str | os.PathLike, ignore: Iterable[str] = (), wait_s: float | None = None) -> None:
    """Print the job's summary on stderr in one write, if this process is the one that prints it."""
    if not prints_here():
        return
    try:
        text = summary_text(root, ignore=ignore, wait_s=wait_s)
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - the summary never breaks the run
        pass
