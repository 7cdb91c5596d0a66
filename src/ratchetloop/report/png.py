"""report.png: the same panels as the page, as one static image (matplotlib, Agg).

A Figure drawn on its own Agg canvas, never pyplot: no global backend switch, no display
needed, nothing left open between reports.
"""

from __future__ import annotations

import io
import math

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from . import style
from .data import ReportData

DPI = 90  # 1440 x 900: readable, and small enough to commit (docs/report.png)


def render(data: ReportData) -> bytes:
    fig = Figure(figsize=(16, 10), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 6)
    c = data.counts
    fig.suptitle(
        f"ratchetloop report: {_t(data.experiment)} ({data.mode}) - seed"
        f" {_num(data.seed_score)}, best {_num(data.best_score)}"
        f"{' ' + _t(data.unit) if data.unit else ''};"
        f" attempts {c.get('attempts', 0)}"
        f" (accepted {c.get('accepted', 0)}, rejected {c.get('rejected', 0)}, failed"
        f" {c.get('failed', 0)}, duplicates {c.get('duplicates', 0)})", fontsize=13)
    for col, axis in enumerate(("iteration", "time", "cost")):
        _progress(fig.add_subplot(grid[0, 2 * col:2 * col + 2]), data, axis)
    _attempts(fig.add_subplot(grid[1, 0:2]), data)
    _heatmap(fig.add_subplot(grid[1, 2:4]), data)
    _failures(fig.add_subplot(grid[1, 4:6]), data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"optimize": True})  # lossless, smaller
    return buf.getvalue()


def _t(text: str) -> str:
    """Literal text: a `$` in a model's words must not start matplotlib mathtext."""
    return text.replace("$", r"\$")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _maybe_log(ax: Axes, values: list[float]) -> None:
    if style.log_scale(values):
        ax.set_yscale("log")


def _progress(ax: Axes, data: ReportData, axis: str) -> None:
    divisor, time_label = style.time_axis(data.attempts[-1].elapsed_s if data.attempts else 0)
    pts = data.best_path
    if axis == "iteration":
        xs, label, title = [float(p.iteration) for p in pts], "iteration", "by iteration"
    elif axis == "time":
        xs, label, title = [p.elapsed_s / divisor for p in pts], time_label, "by wall time"
    else:
        xs, label, title = [p.cost_usd for p in pts], "cumulative cost (USD)", "by cost"
        if not data.total_cost:
            title += " (no cost recorded)"
    ax.step(xs, [p.score for p in pts], where="post", color=style.FIXED["accepted (best)"],
            marker="o", markersize=4)
    ax.set_title(f"Best so far {title}")
    ax.set_xlabel(label)
    ax.set_ylabel(_t(data.score_label))
    ax.grid(alpha=0.3)
    _maybe_log(ax, [p.score for p in pts])


def _attempts(ax: Axes, data: ReportData) -> None:
    """Measured attempts at their score; unmeasured ones on a strip under the plot."""
    scores = [a.score for a in data.attempts if a.score is not None]
    _maybe_log(ax, scores + [p.score for p in data.best_path])
    low = min(scores + [p.score for p in data.best_path], default=1.0)
    strip = low * 0.8 if ax.get_yscale() == "log" else low - 0.08 * (max(scores or [1]) - low
                                                                      or 1)
    colours = style.palette(data.categories)
    for cat in sorted({a.category for a in data.attempts}, key=style.order):
        group = [a for a in data.attempts if a.category == cat]
        ax.scatter([a.iteration for a in group],
                   [a.score if a.score is not None else strip for a in group],
                   color=colours[cat], label=_t(cat), s=28, edgecolors="#333",
                   linewidths=0.4, zorder=3)
    pts = data.best_path
    ax.step([p.iteration for p in pts], [p.score for p in pts], where="post", color="#222",
            linewidth=1, zorder=2)
    ax.set_title("Every attempt (unscored on the bottom strip)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(_t(data.score_label))
    ax.grid(alpha=0.3)
    if data.attempts:
        ax.legend(fontsize=7, loc="best")


def _heatmap(ax: Axes, data: ReportData) -> None:
    h = data.heatmap
    ax.set_title("Per-case speedup vs seed (* holds the case)")
    if not (h.rows and h.cases):
        ax.text(0.5, 0.5, "no winners yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    z = [[math.log2(v) if v else math.nan for v in line] for line in h.speedup]
    span = max((abs(v) for line in z for v in line if not math.isnan(v)), default=1.0) or 1.0
    image = ax.imshow(z, cmap="RdYlGn", aspect="auto",
                      norm=TwoSlopeNorm(vcenter=0, vmin=-span, vmax=span))
    ax.figure.colorbar(image, ax=ax, label="log2 speedup")
    ax.set_xticks(range(len(h.cases)), [_t(c) for c in h.cases], rotation=40, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(h.rows)), [_t(r) for r in h.rows], fontsize=8)
    if len(h.rows) * len(h.cases) <= 160:
        for i, line in enumerate(h.speedup):
            for j, v in enumerate(line):
                if v is not None:
                    ax.text(j, i, f"{v:.2f}{'*' if h.holds[i][j] else ''}", ha="center",
                            va="center", fontsize=7)


def _failures(ax: Axes, data: ReportData) -> None:
    ax.set_title("Failure signatures")
    bars = list(reversed(data.failures))
    if not bars:
        ax.text(0.5, 0.5, "no failures recorded", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    colours = style.palette(data.categories)
    ax.barh(range(len(bars)), [b.count for b in bars],
            color=[colours[f"failed: {b.kind}"] for b in bars])
    ax.set_yticks(range(len(bars)), [_t(style.short(b.signature, 45)) for b in bars], fontsize=7)
    ax.set_xlabel("attempts")
