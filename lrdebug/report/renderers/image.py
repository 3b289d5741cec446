"""``lrdebug plot``: the LR schedule of every param group against the optimizer step, as PNG, SVG or PDF.

One panel per optimizer; skipped steps (red ticks at the bottom), finding steps (labelled lines) and
epoch starts (grey lines) are marked; ``eff_lr`` is drawn as dots when updates were sampled; the
schedule a finding meant (``Report.intended``) is drawn dashed. The y
axis is logarithmic when the positive LRs span more than two decades (symmetric-log, linear near 0,
when a step used LR 0, so that step stays on the plot). Each step's LR is a level one step wide, the
last step's included; the x axis ticks integer steps only. Uses matplotlib's object API
with the Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import clean


def plot_report(report, out: Path) -> None:
    figure(report).savefig(out)


def figure(report):
    """The matplotlib Figure of ``lrdebug plot`` (one panel per optimizer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = report.to_dict()
    curves = report.curves(max_points=4096)
    samples = report.samples()
    optimizers = [o["index"] for o in d["optimizers"]] or [0]
    fig = Figure(figsize=(10, 3.2 * len(optimizers) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(optimizers), 1, squeeze=False)[:, 0]
    title = clean(d["trace"]["script"] or d["trace"]["path"])
    fig.suptitle(f"Learning rate per optimizer step: {title}", fontsize=11)
    for ax, opt in zip(axes, optimizers):
        _panel(ax, report, d, opt, curves, samples)
    return fig


def _panel(ax, report, d, opt: int, curves, samples) -> None:
    label = next((o["label"] for o in d["optimizers"] if o["index"] == opt), f"optimizer {opt}")
    from matplotlib.ticker import MaxNLocator

    ax.set_title(clean(label), fontsize=10, loc="left")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    positive = []
    drawn = zeros = False
    for (o, g), (x, lo, hi, size) in curves.items():
        if o != opt or not len(x):
            continue
        name = clean(report.label(o, g))
        if size == 1:  # each step's LR a level from step - 0.5 to step + 0.5, the last one included
            xs = np.append(x - 0.5, x[-1] + 0.5)
            (line,) = ax.plot(xs, np.append(lo, lo[-1]), drawstyle="steps-post", lw=1.4, label=name)
        else:
            (line,) = ax.plot(x, (lo + hi) / 2, lw=1.2, label=name)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.3, lw=0)
        positive += [lo[lo > 0], hi[hi > 0]]
        zeros = zeros or bool((lo <= 0).any())
        drawn = True
        s = samples.get((o, g))
        if s is not None and "eff_lr" in s and np.isfinite(s["eff_lr"]).any():
            every = max(1, len(s["step"]) // 2000)
            ax.plot(s["step"][::every], s["eff_lr"][::every], ".", ms=3, color=line.get_color(),
                    label=f"{name} eff_lr")
            positive.append(s["eff_lr"][s["eff_lr"] > 0])
    if not drawn:
        ax.text(0.5, 0.5, "no optimizer steps", ha="center", va="center", transform=ax.transAxes)
        return
    for i, groups in report.intended.items():  # the schedule a finding's code meant, dashed
        f = d["findings"][i]
        if f.get("optimizer") != opt:
            continue
        for g, (x, lrs) in groups.items():
            if len(x):
                xs = np.append(x - 0.5, x[-1] + 0.5)
                ax.plot(xs, np.append(lrs, lrs[-1]), drawstyle="steps-post", lw=1.2, ls="--", color="0.3",
                        label=f"{clean(report.label(opt, g))} intended ({clean(f.get('code'))})")
                positive.append(lrs[lrs > 0])
                zeros = zeros or bool((lrs <= 0).any())
    values = np.concatenate(positive) if positive else np.empty(0)
    if len(values) and values.max() / values.min() > 100:
        if zeros:  # log above the smallest positive LR, linear below it: a step at LR 0 stays on the plot
            ax.set_yscale("symlog", linthresh=float(values.min()), linscale=0.3)
            ax.set_ylim(bottom=0)
        else:
            ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    epochs = sorted(set(report.epoch_steps(opt)))[1:]
    if epochs and len(epochs) <= 200:
        ax.vlines([e + 1 for e in epochs], 0, 1, transform=ax.get_xaxis_transform(), colors="0.8", lw=0.8,
                  zorder=0, label="epoch start")
    skipped = report.scan.skipped_steps.get(opt, [])
    if skipped:
        count = report.scan.skipped.get((report.scan.primary, opt), len(skipped))
        ax.vlines(skipped, 0, 0.04, transform=ax.get_xaxis_transform(), colors="red", lw=1,
                  label=f"skipped steps ({count})")
    marked = [f for f in d["findings"] if f.get("step") is not None and f.get("optimizer") in (opt, None)]
    for f in marked[:12]:
        ax.axvline(f["step"], color="orange" if f.get("severity") != "error" else "red", lw=0.9, ls="--")
        ax.annotate(clean(f.get("code")), (f["step"], 1), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=7, va="top", ha="right", color="0.25")
    ax.grid(True, which="major", alpha=0.3)
    ax.margins(x=0.01)
    if math.isfinite(ax.get_xlim()[1]):
        ax.legend(fontsize=8, loc="best")
