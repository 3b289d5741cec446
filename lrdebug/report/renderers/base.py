"""What every renderer shares: trace strings made safe to show, and the report's values as text.

Every string that comes from a trace (paths, names, messages) is data: it goes through ``clean``
(control and escape characters shown as ``\\x1b``, so a name cannot drive the terminal).
"""

from __future__ import annotations

import math
import re
from typing import Any

NO_STEPS = "no optimizer steps were recorded"  # model.NO_STEPS, the note; renderers show it as a headline
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(value: Any) -> str:
    """The text of a trace value with control characters made visible (``\\x1b``)."""
    text = "" if value is None else str(value)
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256 else "\\u%04x" % ord(m.group()),
                        text)


def fmt_lr(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.6g}" if math.isfinite(v) else str(v)


def fmt_ns(v: Any) -> str:
    if v is None:
        return "—"
    v = float(v)
    if v < 1e3:
        return f"{v:.0f} ns"
    if v < 1e6:
        return f"{v / 1e3:.1f} µs"
    if v < 1e9:
        return f"{v / 1e6:.2f} ms"
    return f"{v / 1e9:.2f} s"


def fmt_pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def where(f: dict[str, Any]) -> str:
    if not f.get("file"):
        return ""
    where = f"{f['file']}:{f['line']}" if f.get("line") else str(f["file"])
    return f"{where} via {f['framework']}" if f.get("framework") else where


def status_line(trace: dict[str, Any]) -> str:
    if trace["complete"]:
        return "complete"
    bad = [f"rank {s['rank']}: {s['reason'] or s['state']}" for s in trace["status"] if not s["complete"]]
    if trace["skipped_parts"]:
        bad.append(f"{len(trace['skipped_parts'])} unreadable part(s) skipped")
    if not trace["status"]:
        bad.append("no status file")
    return "INCOMPLETE — " + "; ".join(bad)


def source_text(source: str) -> str:
    if source == "rechecked":
        return "(events rechecked with the current rules)"
    return "(as found during the run" + source[len("recorded"):].replace(" (", ": ").rstrip(")") + ")"


def scheduler_text(d: dict[str, Any], opt: int) -> str:
    scheds = [s for s in d["schedulers"] if s["optimizer"] == opt]
    return ", ".join(f"{s['class'] or 'scheduler'} #{s['index']} ({s['steps']} steps)" for s in scheds) or "none"


def damage_lines(d: dict[str, Any], f: dict[str, Any]) -> list[str]:
    """The intended schedule of a finding, one line per group (none when the finding has none)."""
    intended = f.get("intended")
    if not isinstance(intended, dict):
        return []
    from ...rules.intended import damage_line

    return damage_line(intended)


def versions_text(trace: dict[str, Any]) -> str:
    return (f"torch {trace.get('torch_version') or '?'} · lrdebug {trace.get('lrdebug_version') or '?'} · "
            f"Python {trace.get('python_version') or '?'}")


def frameworks_text(trace: dict[str, Any]) -> str:
    """The packages whose code called optimizer.step() & co. (``lightning 2.4.0``), or ""."""
    return ", ".join(f"{name} {version}" for name, version in (trace.get("frameworks") or {}).items())


def share_text(tm: dict[str, Any]) -> str:
    """The share of an iteration spent in the optimizer step (and waiting for data), as a sentence."""
    step = f"optimizer step {fmt_pct(tm['step_share'])} of an iteration"
    if tm.get("step_closure"):
        step += " (step() ran a closure, so this includes the forward and backward passes)"
    if tm.get("data_wait_share") is not None:
        wait = f"waiting for data {fmt_pct(tm['data_wait_share'])}"
    else:
        wait = "data wait not measured (no DataLoader iterated in the trace)"
    return f"{step[0].upper()}{step[1:]}; {wait}."


def short_label(label: str, optimizer: str) -> str:
    """A group's label inside its optimizer's own table cell: ``pg1`` for ``AdamW/pg1``, a name as it is."""
    prefix = optimizer + "/"
    return label[len(prefix):] if label.startswith(prefix) else label


def last_lrs_text(groups: list[dict[str, Any]], last_lr: list[Any], optimizer: str, most: int = 4) -> str:
    """A rank's last LR per group, each named: one value when every group ends at the same LR."""
    values = [fmt_lr(v) for v in last_lr]
    if not values:
        return "—"
    if len(values) == 1:
        return values[0]
    if len(set(values)) == 1:
        return f"{values[0]} (all {len(values)} groups)"
    names = [short_label(g.get("label") or f"pg{i + 1}", optimizer) for i, g in enumerate(groups)]
    lines = [f"{clean(n)} {v}" for n, v in zip(names, values)]
    return "\n".join(lines[:most] + ([f"… {len(lines) - most} more"] if len(lines) > most else []))
