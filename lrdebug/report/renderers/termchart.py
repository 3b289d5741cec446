"""The terminal LR chart: each group's LR against the optimizer step, drawn in character cells.

Drawn here rather than by a plotting package so that it reads the same with or without colour and on
any terminal: every group has its own marker (``•``, ``x``, ``+`` …) as well as its own colour; the
legend sits under the chart, never over the curves; each step's LR is a level as wide as the step;
the x axis shows integer steps, first and last included; a log scale (when the positive LRs span
more than two decades) keeps the steps whose LR is 0 on a bottom row of their own, labelled ``0``,
and says so; epoch starts are vertical lines, and the title says so only when there are some.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.text import Text

from .base import clean

MARKERS = "•x+o*#@%&=~^$<>?"
COLORS = ("blue", "red", "green", "magenta", "cyan", "yellow", "bright_blue", "bright_red", "bright_green",
          "bright_magenta", "bright_cyan", "bright_yellow", "blue", "red", "green", "magenta")
MAX_EPOCH_LINES = 60


@dataclass
class Chart:
    text: Text
    epoch_lines: bool = False  # vertical lines were drawn at epoch starts
    log: bool = False
    notes: list[str] = field(default_factory=list)


def _fmt(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"


def draw(curves: Sequence[tuple[str, tuple]], epochs: Sequence[int], width: int, height: int = 14) -> Chart | None:
    """``curves``: (label, (first step of each bucket, min LR, max LR, bucket size)) per group, in order;
    ``epochs``: optimizer steps after which an epoch started (0: before the first step)."""
    curves = [(label, c) for label, c in curves if len(c[0])]
    if not curves:
        return None
    drawn, left_out = curves[:len(MARKERS)], curves[len(MARKERS):]
    n = 1
    values = []
    for _, (x, lo, hi, size) in drawn:
        n = max(n, int(x[-1]) + int(size) - 1)
        values += [lo[np.isfinite(lo)], hi[np.isfinite(hi)]]
    vals = np.concatenate(values) if values else np.empty(0)
    pos = vals[vals > 0]
    zeros = bool((vals <= 0).any())
    log = len(pos) > 0 and float(pos.max()) / float(pos.min()) > 100
    height = max(height, 5)

    # y: a value -> a row (0 at the bottom)
    if log:
        lo_e, hi_e = math.log10(float(pos.min())), math.log10(float(pos.max()))
        base = 1 if zeros else 0  # the bottom row is LR 0 (and below) when some step used 0

        def row(v: float) -> int:
            if v <= 0:
                return 0
            return base + round((math.log10(v) - lo_e) / (hi_e - lo_e) * (height - 1 - base))

        labels = {}
        for e in range(math.ceil(lo_e - 1e-9), math.floor(hi_e + 1e-9) + 1):
            labels[row(10.0 ** e)] = f"1e{e}"
        if zeros:
            labels[0] = "0"
        top = height - 1
        if top not in labels and top - 1 not in labels:
            labels[top] = _fmt(float(pos.max()))
        if base not in labels and base + 1 not in labels:
            labels[base] = _fmt(float(pos.min()))
    else:
        y0, y1 = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
        if y1 <= y0:
            pad = abs(y0) * 0.1 or 1.0
            y0, y1 = y0 - pad, y1 + pad

        def row(v: float) -> int:
            return round((v - y0) / (y1 - y0) * (height - 1))

        labels = {}
        for k in range(4):
            r = round(k * (height - 1) / 3)
            labels[r] = _fmt(y0 + (y1 - y0) * r / (height - 1))
    ylab = max(len(s) for s in labels.values())
    cols = max(10, width - ylab - 2)

    def col_span(a: int, b: int) -> tuple[int, int]:
        """Columns covered by steps a..b (each step an equal share of the width)."""
        c0 = min(cols - 1, (a - 1) * cols // n)
        c1 = max(c0, min(cols - 1, -(-b * cols // n) - 1))
        return c0, c1

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * cols for _ in range(height)]
    steps = sorted({int(s) + 1 for s in epochs[1:]}) if 1 < len(epochs) <= MAX_EPOCH_LINES else []
    steps = [s for s in steps if 1 < s <= n]
    for s in steps:
        c = col_span(s, s)[0]
        for r in range(height):
            grid[r][c] = ("│", "bright_black")
    legend: list[tuple[str, str, str]] = []
    seen: dict[tuple, str] = {}
    for i, (label, (x, lo, hi, size)) in enumerate(drawn):
        marker, color = MARKERS[i], COLORS[i % len(COLORS)]
        size = int(size)
        key = (tuple(np.asarray(x).tolist()), tuple(np.asarray(lo).tolist()), tuple(np.asarray(hi).tolist()))
        same = seen.setdefault(key, label)
        legend.append((marker, color, label if same == label else f"{label} (= {same}, drawn over it)"))
        xs = [int(v) for v in x]
        for k, a in enumerate(xs):
            b = a + size - 1
            if size == 1 and k + 1 < len(xs):
                b = max(a, xs[k + 1] - 1)  # the LR holds until the next recorded step
            lo_v, hi_v = float(lo[k]), float(hi[k])
            if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
                continue
            r0, r1 = sorted((row(lo_v), row(hi_v)))
            c0, c1 = col_span(a, b)
            for c in range(c0, c1 + 1):
                for r in range(max(r0, 0), min(r1, height - 1) + 1):
                    grid[r][c] = (marker, color)

    text = Text()
    for r in range(height - 1, -1, -1):
        lab = labels.get(r, "")
        text.append(f"{lab:>{ylab}} ", style="bright_black")
        text.append("┤" if lab else "│", style="bright_black")
        for ch, style in grid[r]:
            text.append(ch, style=style)
        text.append("\n")
    text.append(" " * ylab + " └" + "─" * cols + "\n", style="bright_black")
    # x: integer steps only, the first and the last included, labels never overlapping
    ticks = sorted({1, n, *[round(1 + k * (n - 1) / 4) for k in range(1, 4)]})
    line = [" "] * (cols + 2)
    for t in [1, n] + [t for t in ticks if t not in (1, n)]:  # the first and last step always show
        c0, c1 = col_span(t, t)
        s = str(t)
        start = min(max(2 + (c0 + c1) // 2 - len(s) // 2, 0), cols + 2 - len(s))
        if all(ch == " " for ch in line[max(start - 1, 0):start + len(s) + 1]):
            line[start:start + len(s)] = list(s)
    text.append(" " * ylab + "".join(line).rstrip() + "\n", style="bright_black")
    # the legend, under the chart
    entries = []
    for marker, color, label in legend:
        e = Text()
        e.append(marker, style=color)
        e.append(" " + clean(label))
        entries.append(e)
    row_text, used = Text(" " * (ylab + 2)), ylab + 2
    for e in entries:
        if used + len(e) + 3 > width and used > ylab + 2:
            text.append_text(row_text)
            text.append("\n")
            row_text, used = Text(" " * (ylab + 2)), ylab + 2
        row_text.append_text(e)
        row_text.append("   ")
        used += len(e) + 3
    text.append_text(row_text)
    notes = []
    if steps:
        notes.append(f"{len(epochs)} epochs")
    if log:
        notes.append("log scale" + ("; LR 0 is drawn on the bottom row, labelled 0" if zeros else ""))
    if left_out:
        notes.append(f"{len(left_out)} more group(s) not drawn: {', '.join(clean(lb) for lb, _ in left_out[:6])}"
                     + (" …" if len(left_out) > 6 else ""))
    if 1 < len(epochs) and not steps and len(epochs) > MAX_EPOCH_LINES:
        notes.append(f"{len(epochs)} epochs: too many to draw as lines")
    for note in notes:
        text.append("\n" + " " * (ylab + 2) + f"({note})", style="bright_black")
    text.rstrip()
    return Chart(text, epoch_lines=bool(steps), log=log, notes=notes)
