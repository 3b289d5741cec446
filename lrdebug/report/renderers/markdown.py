"""The report as Markdown (a CI job summary, a pull-request comment); cells are backslash-escaped."""

from __future__ import annotations

import re
from typing import Any

from .base import (
    NO_STEPS,
    clean,
    damage_lines,
    fmt_lr,
    fmt_ns,
    frameworks_text,
    scheduler_text,
    share_text,
    status_line,
    versions_text,
    where,
)

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def md(value: Any) -> str:
    """Markdown-safe text for a table cell or a line."""
    return _MD_SPECIAL.sub(r"\\\1", clean(value).replace("\n", " "))


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def markdown(report) -> str:
    d = report.to_dict()
    t = d["trace"]
    lines = [f"### lrdebug report: {md(t['script'] or t['path'])}", ""]
    lines.append(f"- **Command:** {md(' '.join(t['argv']) or '—')}")
    started = md(t["start"] or "—") + (f" (duration {t['duration_s']:.1f} s)" if t["duration_s"] is not None else "")
    lines.append(f"- **Started:** {started}")
    lines.append(f"- **Ranks:** {', '.join(str(r) for r in d['ranks']) or '—'}")
    lines.append(f"- **Versions:** {md(versions_text(t))}")
    if frameworks_text(t):
        lines.append(f"- **Framework:** {md(frameworks_text(t))} (called optimizer.step())")
    lines.append(f"- **Trace:** {md(status_line(t))}")
    lines += [f"- **Ending:** {md(line)}" for line in t.get("ending") or []]
    lines.append("")
    if not any(g["steps"] for o in d["optimizers"] for g in o["groups"]):
        lines += ["**No optimizer steps were recorded in this trace.**", ""]
    if d["optimizers"]:
        rows = [[md(g["label"]), str(g["steps"]), str(g["skipped"]), fmt_lr(g["first_lr"]), fmt_lr(g["min_lr"]),
                 fmt_lr(g["max_lr"]), fmt_lr(g["last_lr"]), md(scheduler_text(d, o["index"]))]
                for o in d["optimizers"] for g in o["groups"]]
        lines += _md_table(["Group", "Steps", "Skipped", "First LR", "Min", "Max", "Last LR", "Scheduler(s)"], rows)
    findings = d["findings"]
    lines += [f"#### Findings ({len(findings)})", ""]
    if findings:
        rows = [[md(f.get("severity")), f"`{clean(f.get('code')).replace('`', '')}`", md(where(f) or "—"),
                 str(f.get("step") if f.get("step") is not None else "—"), str(f.get("count") or 1),
                 md(" ".join([str(f.get("message") or "")] + [f"Vs intended: {x}." for x in damage_lines(d, f)]))]
                for f in findings]
        lines += _md_table(["Severity", "Code", "Where", "Step", "Count", "Message"], rows)
    else:
        lines += ["No findings.", ""]
    for tm in d["timing"]["optimizers"]:
        label = next((o["label"] for o in d["optimizers"] if o["index"] == tm["optimizer"]), str(tm["optimizer"]))
        rows = [[name, fmt_ns(v["p50"]), fmt_ns(v["p95"]), fmt_ns(v["max"])]
                for name, v in (("optimizer step", tm["dur_ns"]), ("iteration", tm["iter_ns"]),
                                ("data wait", tm["data_wait_ns"])) if v]
        if rows:
            lines += [f"#### Step time: {md(label)}", ""]
            lines += _md_table(["", "p50", "p95", "max"], rows)
            lines += [md(share_text(tm)), ""]
    for note in d["notes"]:
        if note != NO_STEPS:  # said above, in bold
            lines += [f"> note: {md(note)}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- diff
