"""The report as one self-contained HTML page (``lrdebug report --format html -o F``; the ``html`` extra).

The charts are Plotly figures (``plotly`` ships plotly.js inside its Python package): the script is
inlined once, every figure is written by ``plotly.io.to_html`` without a script of its own, so the page
opens from disk with no network. Each chart offers a linear (default) and a log view: the log view
draws an LR of 0 (or below) at a floor under the smallest positive LR, labelled, so no step is dropped.

Curves come from the report model's min/max outlines (``Report.curves``): a group with at most
``max_points`` steps is drawn step by step with exact values; a longer one as a band between the
smallest and largest LR of each bucket of steps, the hover naming the bucket's steps and its exact
extremes. Tables carry exact figures. Strings from the trace are escaped (HTML and chart labels alike).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

from .base import (
    NO_STEPS,
    clean,
    damage_lines,
    fmt_lr,
    fmt_ns,
    frameworks_text,
    scheduler_text,
    share_text,
    source_text,
    status_line,
)

MAX_POINTS = 2000  # drawn points per LR curve (min/max buckets above that)
MAX_TIME_POINTS = 1000  # buckets of the step-time chart
MAX_SAMPLES = 1000  # sampled-update points drawn per group
MAX_EPOCH_LINES = 1000
MAX_RANK_OVERLAY_GROUPS = 4
SEVERITY_COLOURS = {"error": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
_FMT = ".10~g"  # hover: enough digits to read the exact LR

_CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1f2328; --muted: #656d76; --line: #d0d7de;
        --card: #f6f8fa; --error: #d62728; --warning: #c35a00; --info: #1f77b4; --ok: #1a7f37; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #30363d; --card: #161b22;
          --error: #ff6b6b; --warning: #f0a040; --info: #58a6ff; --ok: #3fb950; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.25rem 3rem; background: var(--bg); color: var(--fg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 1.4rem; margin: .2rem 0 .6rem; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
table { border-collapse: collapse; margin: .4rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: var(--card); font-weight: 600; }
td.num { text-align: right; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
dl.header dt { color: var(--muted); } dl.header dd { margin: 0; word-break: break-all; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre.src { background: var(--card); border: 1px solid var(--line); padding: .35rem .6rem; margin: .3rem 0;
          white-space: pre-wrap; word-break: break-all; }
ol.findings { padding-left: 1.4rem; } ol.findings li { margin: .6rem 0; }
.sev { display: inline-block; min-width: 4.6em; font-weight: 700; text-transform: uppercase; font-size: 12px; }
.sev-error { color: var(--error); } .sev-warning { color: var(--warning); } .sev-info { color: var(--info); }
.ok { color: var(--ok); } .bad { color: var(--error); font-weight: 600; }
.muted { color: var(--muted); } .note { color: var(--muted); font-style: italic; }
.chart { border: 1px solid var(--line); border-radius: 6px; margin: .5rem 0 1rem; background: var(--bg); }
.chart-note { color: var(--muted); font-size: 12.5px; margin: -.6rem 0 1rem; }
footer { margin-top: 2.5rem; color: var(--muted); font-size: 12px; }
"""

# Glue, not charting: follow the page's colour scheme (Plotly's own relayout) and count each chart's points
# for tests and readers (data-points on the chart's div).
_JS = """
(function () {
  var dark = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)');
  function theme() {
    var d = dark && dark.matches, fg = d ? '#e6edf3' : '#1f2328', grid = d ? '#30363d' : '#e5e7eb';
    document.querySelectorAll('.js-plotly-plot').forEach(function (gd) {
      var upd = {'font.color': fg, 'xaxis.gridcolor': grid, 'yaxis.gridcolor': grid,
                 'xaxis.zerolinecolor': grid, 'yaxis.zerolinecolor': grid,
                 'legend.font.color': fg, 'updatemenus[0].font.color': '#1f2328',
                 'updatemenus[0].bgcolor': d ? '#c9d1d9' : '#f6f8fa'};
      Plotly.relayout(gd, upd);
    });
  }
  window.addEventListener('load', function () {
    theme();
    if (dark && dark.addEventListener) dark.addEventListener('change', theme);
    document.body.setAttribute('data-ready', '1');
  });
})();
"""


def _plotly():
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
        from plotly.offline import get_plotlyjs
    except ImportError as exc:  # the CLI checks first and says which extra to install
        raise ImportError("the HTML report needs plotly: pip install 'lrdebug[html]'") from exc
    return go, pio, get_plotlyjs


def esc(value: Any) -> str:
    """Trace text made safe for the page and for chart labels (Plotly reads a few HTML tags)."""
    return html.escape(clean(value), quote=True)


# ------------------------------------------------------------------------------------- chart building
class Chart:
    """One Plotly figure with a linear and a log view of the same lines.

    ``line()`` adds a line in both views: in the log view, values <= 0 are drawn at ``floor`` and the
    hover shows the real value. ``marks()`` adds vertical markers (findings, epochs) on a hidden 0..1
    axis, the same in both views.
    """

    def __init__(self, title: str, y_title: str, *, height: int = 380, log_default: bool = False) -> None:
        self.go, self.pio, _ = _plotly()
        self.title, self.y_title, self.height, self.log_default = title, y_title, height, log_default
        self.traces: list[tuple[str, Any]] = []  # (view: "lin" | "log" | "both", trace)
        self.positive_min = math.inf
        self.pending: list[dict[str, Any]] = []
        self.shapes: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.points = 0  # points drawn in the linear view (each line once)

    def line(self, x, y, *, name: str, hover: str = "", customdata=None, group: str | None = None,
             dash: str | None = None, colour: str | None = None, fill_to_previous: bool = False,
             show_legend: bool = True, mode: str = "lines", shape: str = "hv", width: float = 1.6,
             opacity: float = 1.0, hover_skip: bool = False, meta=None) -> None:
        y = np.asarray(y, dtype=np.float64)
        pos = y[np.isfinite(y) & (y > 0)]
        if len(pos):
            self.positive_min = min(self.positive_min, float(pos.min()))
        self.pending.append(dict(x=np.asarray(x), y=y, name=name, hover=hover, customdata=customdata, group=group,
                                 dash=dash, colour=colour, fill=fill_to_previous, legend=show_legend, mode=mode,
                                 shape=shape, width=width, opacity=opacity, skip=hover_skip, meta=meta))
        self.points += len(y)

    def marks(self, xs: list[float], *, name: str, colour: str, hover: list[str], dash: str = "dot",
              label: list[str] | None = None, top: float = 0.97, max_lines: int = 100) -> None:
        """Vertical lines at ``xs`` with a hoverable marker at the top of each; more than ``max_lines``
        would blur into a grey block, so then the markers alone are drawn (a rug)."""
        if not xs:
            return
        go = self.go
        lines = len(xs) <= max_lines
        if lines:
            lx, ly = [], []
            for x in xs:
                lx += [x, x, None]
                ly += [0, 1, None]
            self.traces.append(("both", go.Scatter(x=lx, y=ly, yaxis="y2", mode="lines", name=name,
                                                   legendgroup=name, line=dict(color=colour, dash=dash, width=1),
                                                   hoverinfo="skip", showlegend=True)))
        self.traces.append(("both", go.Scatter(
            x=xs, y=[top] * len(xs), yaxis="y2", mode="markers+text" if label else "markers", name=name,
            legendgroup=name, showlegend=not lines, text=label, textposition="bottom right",
            textfont=dict(size=10, color=colour), marker=dict(color=colour, size=8, symbol="triangle-down"),
            hovertext=hover, hovertemplate="%{hovertext}<extra></extra>")))

    def _floor(self) -> float:
        return self.positive_min / 10 if math.isfinite(self.positive_min) else 1e-12

    def figure(self):
        go = self.go
        floor = self._floor()
        zeros = False
        lines: list[tuple[str, Any]] = []
        for p in self.pending:
            low = ~(p["y"] > 0) & ~np.isnan(p["y"])
            # a line with no LR <= 0 is the same trace in both views; one with some gets a floored copy for log
            for view in ("lin", "log") if low.any() else ("both",):
                y = p["y"]
                custom = p["customdata"]
                template = p["hover"]
                if view == "log":
                    zeros = True
                    if custom is None:
                        custom = y
                        template = template.replace("%{y", "%{customdata")
                    y = np.where(low, floor, y)
                line = dict(dash=p["dash"], color=p["colour"], width=p["width"], shape=p["shape"])
                kw = dict(x=p["x"], y=y, name=p["name"], mode=p["mode"], line=line, opacity=p["opacity"],
                          legendgroup=p["group"] or p["name"], showlegend=p["legend"] and view != "log",
                          visible=True if view == "both" else (view == "log") == self.log_default)
                if p["meta"] is not None:
                    kw["meta"] = p["meta"]
                if p["mode"] != "lines":
                    kw["marker"] = dict(color=p["colour"], size=5)
                if p["fill"]:
                    kw["fill"] = "tonexty"
                    kw["fillcolor"] = _alpha(p["colour"], 0.25)
                if p["skip"]:
                    kw["hoverinfo"] = "skip"
                else:
                    kw["hovertemplate"] = template
                    if custom is not None:
                        kw["customdata"] = custom
                lines.append((view, go.Scatter(**kw)))
        both = lines + self.traces  # marks (added by marks()) drawn over the lines
        ordered = [t for _, t in both]
        views = [v for v, _ in both]
        fig = go.Figure(data=ordered)
        floor_note = dict(xref="paper", yref="y", x=0, y=math.log10(floor), xanchor="left", yanchor="bottom",
                          text=f"≤ 0 drawn at {floor:.3g}", showarrow=False, font=dict(size=10, color="#888"))
        lin_vis = [v in ("lin", "both") for v in views]
        log_vis = [v in ("log", "both") for v in views]
        buttons = [
            dict(label="linear", method="update",
                 args=[{"visible": lin_vis}, {"yaxis.type": "linear", "annotations": self.annotations}]),
            dict(label="log", method="update",
                 args=[{"visible": log_vis}, {"yaxis.type": "log",
                                              "annotations": self.annotations + ([floor_note] if zeros else [])}]),
        ]
        fig.update_layout(
            title=dict(text=self.title, x=0.01, xanchor="left", font=dict(size=14)),
            height=self.height, margin=dict(l=60, r=20, t=50, b=40), hovermode="closest",
            paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
            legend=dict(orientation="h", yanchor="top", y=-0.12, x=0, bgcolor="rgba(0,0,0,0)"),
            xaxis=dict(title=dict(text="optimizer step", standoff=4), showgrid=True, zeroline=False),
            yaxis=dict(title=self.y_title, type="log" if self.log_default else "linear", exponentformat="e"),
            yaxis2=dict(overlaying="y", range=[0, 1], visible=False, fixedrange=True),
            updatemenus=[dict(type="buttons", direction="right", x=0.6, xanchor="center", y=1.13, yanchor="top",
                              showactive=True, active=1 if self.log_default else 0, buttons=buttons,
                              pad=dict(r=2, t=2), font=dict(size=11))],
            shapes=self.shapes,
            annotations=self.annotations + ([floor_note] if zeros and self.log_default else []),
        )
        return fig

    def html(self, div_id: str) -> str:
        fig = self.figure()
        body = self.pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                                config={"displaylogo": False, "responsive": True, "scrollZoom": False,
                                        "toImageButtonOptions": {"format": "png", "filename": div_id}})
        return f'<div class="chart" data-points="{self.points}" data-chart="{div_id}">{body}</div>'


_PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
            "#aec7e8", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#393b79"]


def _colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _alpha(colour: str | None, a: float) -> str:
    c = (colour or "#1f77b4").lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{a})"


def _curve_lines(chart: Chart, points, *, name: str, colour: str, group: str, width: float = 1.6,
                 dash: str | None = None, legend: bool = True) -> None:
    """A group's LR: step by step when each point is one step, else a min/max band per bucket."""
    x, lo, hi, per = points
    x = np.asarray(x)
    if per <= 1:
        chart.line(x, lo, name=name, colour=colour, group=group, width=width, dash=dash, show_legend=legend,
                   hover=f"<b>{name}</b><br>step %{{x:,}}<br>LR %{{y:{_FMT}}}<extra></extra>")
        return
    # the hover of each edge gives the bucket's exact smallest / largest LR; meta: steps per bucket
    span = f"<b>{name}</b><br>the {per:,} steps from step %{{x:,}}<br>"
    chart.line(x, lo, name=name, colour=colour, group=group, width=0.8, dash=dash, show_legend=False,
               hover=span + f"LR min %{{y:{_FMT}}}<extra></extra>")
    chart.line(x, hi, name=name, colour=colour, group=group, width=width, dash=dash, fill_to_previous=True,
               show_legend=legend, hover=span + f"LR max %{{y:{_FMT}}}<extra></extra>")


def _thin(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ~n points of a long series, keeping each bucket's smallest and largest value."""
    if len(x) <= n:
        return x, y
    edges = np.linspace(0, len(x), n // 2 + 1).astype(int)
    keep = set()
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            seg = y[a:b]
            finite = np.isfinite(seg)
            if finite.any():
                keep.add(a + int(np.nanargmin(np.where(finite, seg, np.nan))))
                keep.add(a + int(np.nanargmax(np.where(finite, seg, np.nan))))
            else:
                keep.add(a)
    idx = np.array(sorted(keep | {0, len(x) - 1}))
    return x[idx], y[idx]


# ------------------------------------------------------------------------------------- the page
def _page(title: str, body: list[str]) -> str:
    _, _, get_plotlyjs = _plotly()
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light dark">',
        f"<title>{title}</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        *body,
        f"<script>{_JS}</script>",
        "</body></html>",
    ])


def _table(head: list[str], rows: list[list[str]], num: set[int] = frozenset(), cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _header(d: dict[str, Any]) -> list[str]:
    t = d["trace"]
    name = t["script"] or t["path"]
    rows = [
        ("Script", f"<code>{esc(t['script'] or '—')}</code>"),
        ("Arguments", f"<code>{esc(' '.join(t['argv'][1:]) or '—')}</code>"),
        ("Trace", f"<code>{esc(t['path'])}</code>"),
        ("Started", esc(t["start"] or "—") + (f" on {esc(t['host'])}" if t.get("host") else "")),
        ("Duration", f"{t['duration_s']:.1f} s" if t["duration_s"] is not None else "—"),
        ("Ranks", esc(", ".join(str(r) for r in d["ranks"]) or "—")),
        ("Status", f'<span class="{"ok" if t["complete"] else "bad"}">{esc(status_line(t))}</span>'),
        ("Python", esc(t.get("python_version") or "?")),
        ("torch", esc(t.get("torch_version") or "?")),
        ("lrdebug", esc(t.get("lrdebug_version") or "?")),
        ("Framework", esc(frameworks_text(t) + " (called optimizer.step())") if frameworks_text(t)
         else '<span class="muted">none (your own loop)</span>'),
    ]
    if t.get("sample_updates"):
        rows.append(("Sampled updates", f"every {esc(t['sample_updates'])} steps"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return [f"<h1>lrdebug report: {esc(name)}</h1>", f'<dl class="header" id="header">{dl}</dl>']


def _finding_item(d: dict[str, Any], f: dict[str, Any], label_of) -> str:
    sev = str(f.get("severity") or "info")
    where = ""
    if f.get("file"):
        loc = f"{f['file']}:{f['line']}" if f.get("line") else str(f["file"])
        where = f"<code>{esc(loc)}</code>" + (f" via <code>{esc(f['framework'])}</code>" if f.get("framework") else "")
    bits = []
    if f.get("optimizer") is not None and f.get("group") is not None:
        bits.append(esc(label_of(f["optimizer"], f["group"])))
    if f.get("step") is not None:
        bits.append(f"first at step {int(f['step']):,}")
    if (f.get("count") or 1) > 1:
        bits.append(f"{int(f['count']):,} times")
    src = f'<pre class="src">{esc(f["source_line"])}</pre>' if f.get("source_line") else ""
    damage = "".join(f"<li>vs intended: {esc(x)}</li>" for x in damage_lines(d, f))
    assumption = ""
    intended = f.get("intended")
    if isinstance(intended, dict) and intended.get("assumption"):
        assumption = f'<div class="muted">intended schedule: {esc(intended["assumption"])}</div>'
    return (f'<li class="finding" data-code="{esc(f.get("code"))}" data-severity="{esc(sev)}">'
            f'<span class="sev sev-{esc(sev)}">{esc(sev)}</span> <code><b>{esc(f.get("code"))}</b></code>'
            f' {" · ".join(bits)}<br>{where}{src}<div>{esc(f.get("message"))}</div>'
            f'{assumption}{"<ul>" + damage + "</ul>" if damage else ""}</li>')


def _lr_chart(report, d, o: dict[str, Any], curves, max_points: int) -> Chart:
    opt = o["index"]
    chart = Chart(f"Learning rate: {esc(o['label'])}", "learning rate")
    groups = o["groups"]
    for gi, g in enumerate(groups[:16]):
        pts = curves.get((opt, g["index"]))
        if pts is None or not len(pts[0]):
            continue
        _curve_lines(chart, pts, name=esc(g["label"]), colour=_colour(gi), group=f"g{g['index']}")
    # intended schedules, dashed
    for fi, per_group in sorted(report.intended.items()):
        f = report.findings[fi]
        if f.get("optimizer") != opt:
            continue
        for g, (steps, lrs) in sorted(per_group.items()):
            gi = next((i for i, gg in enumerate(groups) if gg["index"] == g), 0)
            x, y = _thin(np.asarray(steps), np.asarray(lrs, dtype=np.float64), max_points)
            name = f"{esc(report.label(opt, g))} intended ({esc(f.get('code'))})"
            chart.line(x, y, name=name, colour=_colour(gi), dash="dash", width=1.4, group=f"i{fi}-{g}",
                       hover=f"<b>{name}</b><br>step %{{x:,}}<br>intended LR %{{y:{_FMT}}}<extra></extra>")
    # findings at their first step
    for sev in ("error", "warning", "info"):
        fs = [f for f in report.findings if f.get("optimizer") == opt and f.get("step") is not None
              and f.get("severity") == sev]
        if fs:
            chart.marks([int(f["step"]) for f in fs], name=f"{sev} findings", colour=SEVERITY_COLOURS[sev],
                        dash="dash", label=[esc(f.get("code")) for f in fs],
                        hover=[f"<b>{esc(f.get('code'))}</b> ({sev}) at step {int(f['step']):,}<br>"
                               f"{esc(_short(f.get('message')))}" for f in fs])
    epochs = report.epoch_steps(opt)
    if epochs:
        idx = list(range(len(epochs)))
        if len(idx) > MAX_EPOCH_LINES:
            idx = np.unique(np.linspace(0, len(epochs) - 1, MAX_EPOCH_LINES).astype(int)).tolist()
        chart.marks([epochs[i] + 0.5 for i in idx], name="epoch starts", colour="#999999", top=0.02,
                    hover=[f"epoch {i + 1} starts after step {epochs[i]:,}" for i in idx])
    skipped = report.scan.skipped_steps.get(opt) or []
    if skipped:
        chart.marks([float(s) for s in skipped[:MAX_EPOCH_LINES]], name="skipped steps", colour="#d62728",
                    dash="solid", top=0.05, hover=[f"step {s:,} skipped (AMP found inf/NaN)"
                                                   for s in skipped[:MAX_EPOCH_LINES]])
    return chart


def _short(text: Any, n: int = 240) -> str:
    s = clean(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _step_time_chart(label: str, st: dict[str, np.ndarray]) -> Chart:
    per = int(st["steps_per_point"])
    title = f"Step time: {esc(label)}" + (f" (mean and max per {per:,} steps)" if per > 1 else "")
    chart = Chart(title, "milliseconds", height=320)
    x = st["step"]
    for i, (key, name) in enumerate((("iter_ns", "iteration"), ("dur_ns", "optimizer step"),
                                     ("data_wait_ns", "data wait"))):
        mean = st[f"{key}_mean"] / 1e6
        if not np.isfinite(mean).any():
            continue
        colour = ["#1f77b4", "#ff7f0e", "#2ca02c"][i]
        if per > 1:
            mx = st[f"{key}_max"] / 1e6
            span = f"<b>{name}</b><br>the {per:,} steps from step %{{x:,}}<br>"
            chart.line(x, mean, name=f"{name} (mean)", colour=colour, group=key,
                       hover=span + "mean %{y:.4g} ms<extra></extra>")
            chart.line(x, mx, name=f"{name} (max)", colour=colour, group=key, width=0.8, opacity=0.45,
                       show_legend=False, hover=span + "max %{y:.4g} ms<extra></extra>")
        else:
            chart.line(x, mean, name=name, colour=colour, group=key,
                       hover=f"<b>{name}</b><br>step %{{x:,}}<br>%{{y:.4g}} ms<extra></extra>")
    return chart


def _first_divergence(curves: dict[int, tuple]) -> int | None:
    """The first step at which some rank's outline differs from the lowest rank's (same bucketing)."""
    ranks = sorted(curves)
    if len(ranks) < 2:
        return None
    x0, lo0, hi0, per0 = curves[ranks[0]]
    first = None
    for r in ranks[1:]:
        x, lo, hi, per = curves[r]
        n = min(len(x), len(x0))
        if per != per0:
            continue
        same = (x[:n] == x0[:n]) & _close(lo[:n], lo0[:n]) & _close(hi[:n], hi0[:n])
        if not same.all():
            k = int(np.argmin(same))
            step = int(min(x[k], x0[k]))
            first = step if first is None else min(first, step)
        elif len(x) != len(x0):
            step = int(x[n] if len(x) > n else x0[n])
            first = step if first is None else min(first, step)
    return first


def _close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (np.abs(a - b) <= 1e-12 * np.maximum(np.abs(a), np.abs(b))) | (a == b) | (np.isnan(a) & np.isnan(b))


def _rank_chart(report, o: dict[str, Any], rank_curves, max_points: int) -> Chart | None:
    opt = o["index"]
    groups = o["groups"][:MAX_RANK_OVERLAY_GROUPS]
    ranks = sorted({r for r, oo, _ in rank_curves if oo == opt})
    if len(ranks) < 2:
        return None
    chart = Chart(f"Per rank: {esc(o['label'])}", "learning rate")
    diverge = None
    dash_styles = [None, "dot", "dash", "longdash", "dashdot"]
    for gi, g in enumerate(groups):
        per_rank = {r: rank_curves[(r, opt, g["index"])] for r in ranks if (r, opt, g["index"]) in rank_curves}
        d = _first_divergence(per_rank)
        if d is not None:
            diverge = d if diverge is None else min(diverge, d)
        for ri, r in enumerate(ranks):
            pts = per_rank.get(r)
            if pts is None or not len(pts[0]):
                continue
            x, lo, hi, per = pts
            name = f"rank {r} · {esc(g['label'])}"
            chart.line(x, hi, name=name, colour=_colour(ri), group=f"r{r}", dash=dash_styles[gi % 5], width=1.4,
                       hover=(f"<b>{name}</b><br>step %{{x:,}}<br>LR {'max ' if per > 1 else ''}"
                              f"%{{y:{_FMT}}}<extra></extra>"))
    fs = [f for f in report.findings if f.get("code") == "rank-divergence" and f.get("step") is not None]
    if fs:
        chart.marks([int(f["step"]) for f in fs], name="rank-divergence", colour=SEVERITY_COLOURS["error"],
                    dash="dash", label=["rank-divergence"] * len(fs),
                    hover=[f"<b>rank-divergence</b> at step {int(f['step']):,}<br>{esc(_short(f.get('message')))}"
                           for f in fs])
    if diverge is not None:
        chart.shapes.append(dict(type="rect", xref="x", yref="paper", x0=diverge, x1=max(
            int(p[0][-1]) + int(p[3]) - 1 for p in rank_curves.values() if len(p[0])), y0=0, y1=1,
            fillcolor="rgba(214,39,40,0.10)", line=dict(width=0), layer="below"))
        chart.annotations.append(dict(xref="x", yref="paper", x=diverge, y=1, xanchor="left", yanchor="top",
                                      text=f"ranks differ from step {diverge:,}", showarrow=False,
                                      font=dict(color="#d62728", size=11)))
    chart.divergence = diverge
    return chart


def _samples_charts(report, o: dict[str, Any], samples) -> list[Chart]:
    opt = o["index"]
    keys = [(g, samples[(opt, g["index"])]) for g in o["groups"][:16] if (opt, g["index"]) in samples]
    if not keys:
        return []
    eff = Chart(f"Sampled update: eff_lr and lr, {esc(o['label'])}", "learning rate", height=320)
    ratio = Chart(f"Sampled update: update_ratio, {esc(o['label'])}", "update_norm / param_norm", height=320,
                  log_default=True)
    for gi, (g, a) in enumerate(keys):
        step = a["step"]
        sel = np.unique(np.linspace(0, len(step) - 1, MAX_SAMPLES).astype(int)) if len(step) > MAX_SAMPLES \
            else slice(None)
        x = step[sel]
        name = esc(g["label"])
        if "eff_lr" in a:
            eff.line(x, a["eff_lr"][sel], name=f"{name} eff_lr", colour=_colour(gi), group=f"e{gi}",
                     mode="markers", hover=f"<b>{name}</b><br>step %{{x:,}}<br>eff_lr %{{y:{_FMT}}}<extra></extra>")
        if "lr" in a:
            eff.line(x, np.asarray(a["lr"][sel], dtype=np.float64), name=f"{name} lr", colour=_colour(gi),
                     group=f"l{gi}", width=1, shape="linear",
                     hover=f"<b>{name}</b><br>step %{{x:,}}<br>lr %{{y:{_FMT}}}<extra></extra>")
        if "update_ratio" in a:
            ratio.line(x, a["update_ratio"][sel], name=name, colour=_colour(gi), group=f"u{gi}", mode="markers",
                       hover=f"<b>{name}</b><br>step %{{x:,}}<br>update_ratio %{{y:.4g}}<extra></extra>")
    ratio.shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=1e-3, y1=1e-3,
                             line=dict(color="#999", dash="dot", width=1)))
    return [eff, ratio]


def render_html(report, max_points: int = MAX_POINTS) -> str:
    """The page of ``report`` (a ``Report``)."""
    _plotly()
    d = report.to_dict()
    t = d["trace"]
    curves = report.curves(max_points)
    body = _header(d)
    if NO_STEPS in d["notes"]:
        body.append("<p><b>No optimizer steps were recorded in this trace.</b></p>")

    # findings
    label_of = report.label
    findings = d["findings"]
    counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in ("error", "warning", "info")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items() if n) or "none"
    body.append(f'<h2 id="findings-title">Findings ({len(findings)}: {summary})</h2>')
    body.append(f'<p class="muted">{esc(source_text(d["findings_source"]))}</p>')
    if findings:
        body.append('<ol class="findings" id="findings">' + "".join(_finding_item(d, f, label_of) for f in findings)
                    + "</ol>")
    else:
        body.append('<p id="findings" class="ok">No findings.</p>')

    # LR per optimizer
    body.append("<h2>Learning rate</h2>")
    for o in d["optimizers"]:
        rows = [[esc(g["label"]), f"{g['steps']:,}", f"{g['skipped']:,}", fmt_lr(g["first_lr"]), fmt_lr(g["min_lr"]),
                 fmt_lr(g["max_lr"]), fmt_lr(g["last_lr"])] for g in o["groups"]]
        body.append(f"<h3>{esc(o['label'])} <span class='muted'>({esc(o['class'] or '?')}; scheduler: "
                    f"{esc(scheduler_text(d, o['index']))})</span></h3>")
        body.append(_table(["Group", "Steps", "Skipped", "First LR", "Min", "Max", "Last LR"], rows,
                           num={1, 2, 3, 4, 5, 6}))
        chart = _lr_chart(report, d, o, curves, max_points)
        if chart.points:
            body.append(chart.html(f"lr-{o['index']}"))
            per = max((curves[(o["index"], g["index"])][3] for g in o["groups"]
                       if (o["index"], g["index"]) in curves), default=1)
            note = ("Each step drawn with its exact LR." if per <= 1 else
                    f"Drawn as the smallest and largest LR of each {per:,} steps (the hover gives both, exactly); "
                    "the table has the exact figures.")
            body.append(f'<p class="chart-note">{note} Drag to zoom, double-click to reset; '
                        "“log” draws an LR of 0 at a floor, labelled.</p>")
        if len(d["ranks"]) > 1:
            rc = _rank_chart(report, o, report.rank_curves(max_points), max_points)
            if rc is not None:
                body.append(rc.html(f"ranks-{o['index']}"))
                if rc.divergence is not None:
                    body.append(f'<p class="chart-note bad">Ranks differ from step {rc.divergence:,} '
                                "(shaded).</p>")
            if o.get("ranks"):
                rows = [[str(r["rank"]), f"{r['steps']:,}", f"{r['skipped']:,}",
                         " · ".join(fmt_lr(v) for v in r["last_lr"])] for r in o["ranks"]]
                body.append(_table(["Rank", "Steps", "Skipped", "Last LR per group"], rows, num={1, 2}))
        for c, kind in zip(_samples_charts(report, o, report.samples()), ("eff", "ratio")):
            body.append(c.html(f"updates-{kind}-{o['index']}"))

    # step time
    body.append("<h2>Step time</h2>")
    series = report.step_time(MAX_TIME_POINTS)
    any_timing = False
    for tm in d["timing"]["optimizers"]:
        label = next((o["label"] for o in d["optimizers"] if o["index"] == tm["optimizer"]), str(tm["optimizer"]))
        rows = [[name, fmt_ns(v["p50"]), fmt_ns(v["p95"]), fmt_ns(v["max"]), f"{v['n']:,}"]
                for name, v in (("iteration", tm["iter_ns"]), ("optimizer step", tm["dur_ns"]),
                                ("data wait", tm["data_wait_ns"]), ("CUDA time", tm["cuda_ns"])) if v]
        if not rows:
            continue
        any_timing = True
        body.append(f"<h3>{esc(label)}</h3>")
        body.append(_table(["", "p50", "p95", "max", "n"], rows, num={1, 2, 3, 4}))
        body.append(f"<p>{esc(share_text(tm))}</p>")
        if tm.get("slowest"):
            srows = [[f"{s['step']:,}", fmt_ns(s["iter_ns"]), fmt_ns(s["dur_ns"]), fmt_ns(s["data_wait_ns"])]
                     for s in tm["slowest"]]
            body.append("<details><summary>Slowest iterations</summary>"
                        + _table(["Step", "Iteration", "Optimizer step", "Data wait"], srows, num={0, 1, 2, 3})
                        + "</details>")
        st = series.get(tm["optimizer"])
        if st is not None and len(st["step"]):
            body.append(_step_time_chart(label, st).html(f"time-{tm['optimizer']}"))
    other = [[name, fmt_ns(v["p50"]), fmt_ns(v["p95"]), fmt_ns(v["max"]), f"{v['n']:,}"]
             for name, v in (("scheduler step", d["timing"]["scheduler_step_ns"]),
                             ("zero_grad", d["timing"]["zero_grad_ns"])) if v]
    if other:
        any_timing = True
        body.append(_table(["", "p50", "p95", "max", "n"], other, num={1, 2, 3, 4}))
    if not any_timing:
        body.append('<p class="muted">No timings recorded.</p>')

    notes = [n for n in d["notes"] if n != NO_STEPS]
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    body.append(f"<footer>lrdebug report of <code>{esc(t['path'])}</code>; {t['rows']:,} rows in "
                f"{t['parts']:,} part(s). The page needs no network.</footer>")
    return _page(f"lrdebug report: {esc(t['script'] or t['path'])}", body)


# ------------------------------------------------------------------------------------- diff
def render_diff_html(result: dict[str, Any], curves_a=None, curves_b=None) -> str:
    """The page of ``lrdebug diff --format html``; ``curves_a``/``curves_b``: ``Report.rank_curves()``
    of each side, for an overlay per compared group (None: tables only)."""
    _plotly()
    same = result["identical"]
    body = [f"<h1>lrdebug diff: {'identical' if same else 'the learning rates differ'}</h1>",
            '<dl class="header" id="header">'
            f"<dt>A</dt><dd><code>{esc(result['a'])}</code> (ranks {esc(', '.join(map(str, result['ranks_a'])))})</dd>"
            f"<dt>B</dt><dd><code>{esc(result['b'])}</code> (ranks {esc(', '.join(map(str, result['ranks_b'])))})</dd>"
            f"<dt>Tolerance</dt><dd>relative {result['rtol']:g}</dd></dl>"]
    rows = []
    for g in result["groups"]:
        rank = str(g["rank"]) if g["rank"] is not None else f"{g['rank_a']} vs {g['rank_b']}"
        if g["identical"]:
            verdict = '<span class="ok">identical</span>'
        elif g["first_diff_step"] is not None:
            verdict = (f'<span class="bad">differ from step {g["first_diff_step"]:,}</span>: '
                       f"A {fmt_lr(g['lr_a'])}, B {fmt_lr(g['lr_b'])}")
        else:
            verdict = f'<span class="bad">lengths differ</span> (equal on {g["compared"]:,} common steps)'
        rows.append([rank, esc(g["label"]), f"{g['steps_a']:,}", f"{g['steps_b']:,}", verdict])
    body.append('<h2 id="findings-title">Per group</h2>')
    body.append('<div id="findings">' + _table(["Rank", "Group", "Steps A", "Steps B", "Result"], rows, num={2, 3})
                + "</div>")
    for i, g in enumerate(result["groups"]):
        key_a = (g["rank_a"], g["optimizer"], g["group"])
        key_b = (g["rank_b"], g["optimizer"], g["group"])
        if curves_a is not None and curves_b is not None and (key_a in curves_a or key_b in curves_b):
            chart = Chart(f"{esc(g['label'])} (rank {esc(g['rank_a'])}): A and B", "learning rate", height=340)
            for side, curves, key, colour, dash in (("A", curves_a, key_a, "#1f77b4", None),
                                                    ("B", curves_b, key_b, "#ff7f0e", "dash")):
                if key in curves and len(curves[key][0]):
                    _curve_lines(chart, curves[key], name=side, colour=colour, group=side, dash=dash)
            if g["first_diff_step"] is not None:
                chart.marks([g["first_diff_step"]], name="first difference", colour="#d62728", dash="dash",
                            label=["first difference"],
                            hover=[f"step {g['first_diff_step']:,}: A {fmt_lr(g['lr_a'])}, B {fmt_lr(g['lr_b'])}"])
            body.append(chart.html(f"diff-{i}"))
        if g.get("context"):
            ctx = [[f"{c['step']:,}", fmt_lr(c["lr_a"]), fmt_lr(c["lr_b"]), "differs" if c["differs"] else ""]
                   for c in g["context"]]
            body.append(f"<h3>{esc(g['label'])}: around the first difference</h3>"
                        + _table(["Step", "LR A", "LR B", ""], ctx, num={0, 1, 2}))
    if result["notes"]:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result["notes"]) + "</ul>")
    return _page("lrdebug diff", body)


def page_summary(html_text: str) -> dict[str, Any]:
    """Size of a page and its charts' point counts (``data-points``), for scripts and tests."""
    import re

    return {"bytes": len(html_text.encode()),
            "charts": {m.group(2): int(m.group(1)) for m in re.finditer(
                r'data-points="(\d+)" data-chart="([^"]+)"', html_text)}}

