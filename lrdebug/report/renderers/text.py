"""Render a ``Report`` (or a diff result) as rich renderables: the terminal report and its LR chart.

Strings from the trace go through ``base.clean`` into rich ``Text`` objects, never parsed as markup.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .base import (
    NO_STEPS,
    clean,
    damage_lines,
    fmt_lr,
    fmt_ns,
    frameworks_text,
    last_lrs_text,
    scheduler_text,
    share_text,
    source_text,
    status_line,
    versions_text,
    where,
)
from .termchart import draw

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def T(value: Any, style: str | None = None) -> Text:  # noqa: N802 - reads as a constructor
    return Text(clean(value), style=style or "")


# ------------------------------------------------------------------------------------- text
def renderables(report, width: int) -> Iterable[Any]:
    d = report.to_dict()
    yield _header(d)
    if not any(g["steps"] for o in d["optimizers"] for g in o["groups"]):
        yield Text("No optimizer steps were recorded in this trace.", style="bold yellow")
    if d["optimizers"]:
        yield _lr_table(d)
        for o in d["optimizers"]:
            try:
                chart = lr_chart(report, o["index"], max(40, width - 4))
            except Exception as exc:  # noqa: BLE001 - a chart that cannot be drawn must not cost the report
                yield T(f"(no LR chart for {o['label']}: {type(exc).__name__}: {exc})", "yellow")
                continue
            if chart is not None:
                title = Text.assemble("LR schedule: ", T(o["label"]),
                                      " (vertical lines: epoch starts)" if chart.epoch_lines else "")
                yield Panel(chart.text, title=title, title_align="left", expand=False)
        updates = _updates_table(d)
        if updates is not None:
            yield updates
    yield _findings(d)
    yield from _timing(d)
    if len(d["ranks"]) > 1:
        if len(d["ranks"]) <= 8 or "rank_groups" not in d:
            yield _ranks_table(d)
        if "rank_groups" in d:
            yield from _rank_story(d)
    for note in d["notes"]:
        if note != NO_STEPS:  # said above, as the headline
            yield T(f"note: {note}", "yellow")


def _header(d: dict[str, Any]) -> Panel:
    t = d["trace"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Trace", T(t["path"]))
    grid.add_row("Script", T(" ".join(t["argv"]) or "—"))
    started = t["start"] or "—"
    if t["duration_s"] is not None:
        started += f"  (duration {t['duration_s']:.1f} s)"
    grid.add_row("Started", T(started))
    ranks = ", ".join(str(r) for r in d["ranks"]) or "—"
    if t["world_size"]:
        ranks += f"  (world size {t['world_size']})"
    grid.add_row("Ranks", T(ranks))
    grid.add_row("Versions", T(versions_text(t)))
    if frameworks_text(t):
        grid.add_row("Framework", T(frameworks_text(t) + " (called optimizer.step())"))
    status = status_line(t)
    grid.add_row("Status", T(status, "green" if t["complete"] else "bold red"))
    for i, line in enumerate(t.get("ending") or []):
        grid.add_row("Ending" if i == 0 else "", T(line, "red"))
    grid.add_row("Rows", T(f"{t['rows']:,} in {t['parts']} part(s)"))
    return Panel(grid, title="lrdebug report", title_align="left", expand=False)


def _lr_table(d: dict[str, Any]) -> Table:
    table = Table(title="Learning rate per param group", title_justify="left")
    for name, just in (("Group", "left"), ("Steps", "right"), ("Skipped", "right"), ("First LR", "right"),
                       ("Min", "right"), ("Max", "right"), ("Last LR", "right")):
        table.add_column(name, justify=just)
    table.add_column("Scheduler(s)")
    for o in d["optimizers"]:
        for g in o["groups"]:
            table.add_row(T(g["label"]), str(g["steps"]), str(g["skipped"]), fmt_lr(g["first_lr"]),
                          fmt_lr(g["min_lr"]), fmt_lr(g["max_lr"]), fmt_lr(g["last_lr"]),
                          T(scheduler_text(d, o["index"])))
    return table


def lr_chart(report, optimizer: int, width: int, height: int = 14):
    """The LR curves of one optimizer's groups (``termchart.Chart``), epoch starts as vertical lines, and
    the schedule each finding meant (``Report.intended``) as one more curve with its own marker."""
    curves = [(report.label(o, g), c) for (o, g), c in report.curves(max_points=2 * width).items()
              if o == optimizer]
    for i, groups in sorted(report.intended.items()):
        f = report.findings[i]
        if f.get("optimizer") == optimizer:
            for g, (x, lrs) in sorted(groups.items()):
                curves.append((f"{report.label(optimizer, g)} intended ({f.get('code')})",
                               _buckets(x, lrs, 2 * width)))
    return draw(curves, report.epoch_steps(optimizer), width, height)


def _buckets(x: np.ndarray, y: np.ndarray, most: int) -> tuple:
    """(first step, min, max, steps per bucket) of a per-step series, in at most ``most`` buckets."""
    n = len(x)
    size = max(1, -(-n // max(most, 1)))
    starts = np.arange(0, n, size)
    return x[starts], np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts), size


def _updates_table(d: dict[str, Any]) -> Table | None:
    rows = [(g, g["updates"]) for o in d["optimizers"] for g in o["groups"] if g.get("updates")]
    if not rows:
        return None
    every = d["trace"].get("sample_updates")
    title = "Measured update per group" + (f" (sampled every {every} steps)" if every else "")
    table = Table(title=title, title_justify="left", caption="first / median / last; update_ratio is often ~1e-3",
                  caption_justify="left")
    for name in ("Group", "Samples", "lr", "eff_lr", "update_ratio", "grad_norm", "vs ~1e-3"):
        table.add_column(name, justify="left" if name in ("Group", "vs ~1e-3") else "right")

    def trio(u, key):
        v = u.get(key)
        return "—" if not v else " / ".join(fmt_lr(v[k]) for k in ("first", "median", "last"))

    hints = {"high": "high: LR may be too large", "low": "low: LR may be too small", "typical": "typical"}
    for g, u in rows:
        table.add_row(T(g["label"]), str(u["samples"]), trio(u, "lr"), trio(u, "eff_lr"), trio(u, "update_ratio"),
                      trio(u, "grad_norm"), hints.get(u.get("ratio_hint"), "—"))
    return table


def _findings(d: dict[str, Any]):
    findings = d["findings"]
    head = Text.assemble((f"Findings ({len(findings)})", "bold"), f"  {source_text(d['findings_source'])}")
    if not findings:
        return Group(head, Text("No findings.", style="green"))
    parts: list[Any] = [head]
    for f in findings:
        sev = str(f.get("severity") or "?")
        line = Text.assemble((f"{sev.upper():8}", _SEVERITY_STYLE.get(sev, "")), (clean(f.get("code")), "bold"))
        details = [x for x in (where(f), f"step {f['step']}" if f.get("step") is not None else "",
                               f"×{f.get('count') or 1}") if x]
        line.append("  " + clean(" · ".join(details)))
        parts.append(line)
        parts.append(Text("\n".join("    " + clean(m) for m in str(f.get("message") or "").splitlines())))
        for damage in damage_lines(d, f):
            parts.append(Text.assemble(("    vs intended  ", "bold"), clean(damage)))
    return Group(*parts)


def _timing(d: dict[str, Any]) -> Iterable[Any]:
    timing = d["timing"]
    rank = d["trace"]["primary_rank"]
    for t in timing["optimizers"]:
        label = next((o["label"] for o in d["optimizers"] if o["index"] == t["optimizer"]), str(t["optimizer"]))
        table = Table(title=Text.assemble("Step time: ", T(label), f" (rank {rank})"), title_justify="left")
        for name in ("", "p50", "p95", "max", "n"):
            table.add_column(name, justify="left" if not name else "right")
        rows = [("optimizer step", t["dur_ns"]), ("iteration", t["iter_ns"]), ("data wait", t["data_wait_ns"]),
                ("CUDA optimizer step", t["cuda_ns"])]
        if t is timing["optimizers"][0]:
            rows += [("scheduler step", timing["scheduler_step_ns"]), ("zero_grad", timing["zero_grad_ns"])]
        for name, dist in rows:
            if dist:
                approx = "" if dist["exact"] else "≈"
                table.add_row(name, approx + fmt_ns(dist["p50"]), approx + fmt_ns(dist["p95"]), fmt_ns(dist["max"]),
                              f"{dist['n']:,}")
        yield table
        yield Text(share_text(t))
        if t["slowest"]:
            slow = Table(title="Slowest steps", title_justify="left")
            for name in ("step", "iteration", "optimizer step", "data wait"):
                slow.add_column(name, justify="right")
            for s in t["slowest"]:
                slow.add_row(str(s["step"]), fmt_ns(s["iter_ns"]), fmt_ns(s["dur_ns"]), fmt_ns(s["data_wait_ns"]))
            yield slow


def _rank_story(d: dict[str, Any]):
    """Agreeing ranks as one line, each other group with where it departs; the slowest ranks."""
    lines = [Text(f"Ranks ({len(d['ranks'])}):", style="bold")]
    for i, g in enumerate(d["rank_groups"]):
        steps = sorted(set(g["steps"].values()))
        steps_text = f"{steps[0]:,} steps" if len(steps) == 1 else "steps " + ", ".join(
            f"{k} {v:,}" for k, v in g["steps"].items())
        who = f"rank{'s' if g['count'] > 1 else ''} {g['ranks_text']}"
        if i == 0:
            what = "identical LR schedule" if g["count"] > 1 else "LR schedule"
            lines.append(Text.assemble("  ", T(who), f": {what}, {steps_text}", style="green"))
        else:
            ref = g.get("compared_with_rank")
            if g.get("lr_differs_from_step") is not None:
                what = f"LR differs from rank {ref}'s from step {g['lr_differs_from_step']:,}"
            else:
                what = f"same LRs as rank {ref} on the steps both have"
            lines.append(Text.assemble("  ", T(who), f": {what}, {steps_text}", style="red"))
    yield Text("\n").join(lines)
    st = d.get("stragglers")
    if st and len(d["ranks"]) > 1:
        title = (f"Slowest ranks by optimizer step time (of {st['ranks']}; median rank: step p50 "
                 f"{fmt_ns(st['median_rank']['dur_ns_p50'])})")
        table = Table(title=title, title_justify="left", min_width=len(title))  # the title on one line
        for col in ("Rank", "step p50", "step p95", "data wait p50", "data wait p95"):
            table.add_column(col, justify="right")
        for e in st["slowest"]:
            w = e.get("data_wait_ns") or {}
            table.add_row(str(e["rank"]), fmt_ns(e["dur_ns"]["p50"]), fmt_ns(e["dur_ns"]["p95"]),
                          fmt_ns(w.get("p50")), fmt_ns(w.get("p95")))
        yield table


def _ranks_table(d: dict[str, Any]) -> Table:
    table = Table(title="Ranks", title_justify="left")
    table.add_column("Rank", justify="right")
    table.add_column("State")
    table.add_column("Ended")
    for o in d["optimizers"]:
        table.add_column(Text.assemble(T(o["label"]), " steps"), justify="right")
        table.add_column(Text.assemble(T(o["label"]), " last LR"), justify="right")
    status = {s["rank"]: s for s in d["trace"]["status"]}
    for r in d["ranks"]:
        s = status.get(r, {})
        cells: list[Any] = [str(r), T(s.get("state") or "no status",
                                      "green" if s.get("complete") else "red"),
                            T(s.get("ended") or "without closing", "" if s.get("ended") == "normally" else "red")]
        for o in d["optimizers"]:
            e = next((x for x in o.get("ranks", []) if x["rank"] == r), None)
            cells += [str(e["steps"]) if e else "—",
                      T(last_lrs_text(o["groups"], e["last_lr"], o["label"])) if e else "—"]
        table.add_row(*cells)
    return table


# ------------------------------------------------------------------------------------- markdown
def _ranks_text(ranks: list[int]) -> str:
    return f"rank{'s' if len(ranks) != 1 else ''} {', '.join(str(r) for r in ranks)}" if ranks else "no rank"


def diff_renderables(result: dict[str, Any]) -> Iterable[Any]:
    ranks_a, ranks_b = result.get("ranks_a", []), result.get("ranks_b", [])
    yield Text.assemble("A: ", T(result["a"]), f" ({_ranks_text(ranks_a)})", "\nB: ", T(result["b"]),
                        f" ({_ranks_text(ranks_b)})",
                        f"\nLRs compared per optimizer step (equal within {result['rtol']:g} relative)")
    for note in result.get("notes", []):
        yield Text(note, style="yellow")
    several = len(result.get("pairs", [])) > 1
    for g in result["groups"]:
        label = T(g["label"], "bold")
        if several:
            label = Text.assemble(f"rank {g['rank_a']} ", label)
        if g["identical"]:
            yield Text.assemble(label, f": identical over {g['steps_a']} steps", style="")
            continue
        if not g["steps_a"] or not g["steps_b"]:
            only = "A" if g["steps_a"] else "B"
            yield Text.assemble(label, f": only in {only} ({g['steps_a'] or g['steps_b']} steps)")
            continue
        msg = Text.assemble(label, ": ")
        if g["first_diff_step"] is not None:
            msg.append(f"differs from step {g['first_diff_step']}: A {fmt_lr(g['lr_a'])}, B {fmt_lr(g['lr_b'])}",
                       style="red")
        else:
            msg.append(f"equal over the {g['compared']} common steps", style="")
        if g["steps_a"] != g["steps_b"] or g["compared"] != g["steps_a"]:
            msg.append(f"; A has {g['steps_a']} steps, B has {g['steps_b']} (compared {g['compared']} common)",
                       style="yellow")
        yield msg
        if g.get("context"):
            table = Table(box=None, padding=(0, 2))
            for name in ("", "step", "A", "B"):
                table.add_column(name, justify="right")
            for c in g["context"]:
                table.add_row(">" if c["differs"] else "", str(c["step"]), fmt_lr(c["lr_a"]), fmt_lr(c["lr_b"]),
                              style="red" if c["differs"] else "")
            yield table
    if not result["groups"]:
        yield Text("Neither trace has optimizer steps.")
    compared = result.get("ranks_compared") or []
    on = ""
    if compared and (len(ranks_a) > 1 or len(ranks_b) > 1):
        differ = sorted({g["rank_a"] for g in result["groups"] if not g["identical"]})
        on = f" on {_ranks_text(differ if not result['identical'] else compared)}"
    yield Text(("identical" if result["identical"] else "the learning rates differ") + on,
               style="green" if result["identical"] else "bold red")

