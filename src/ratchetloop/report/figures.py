"""The report's interactive panels as plotly figures, one function per panel.

Every string that reaches a figure is HTML-escaped first: notes, messages and failure
signatures are written by a model, and plotly renders a subset of HTML in labels and hovers.
"""

from __future__ import annotations

import math
from html import escape

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import style
from .data import Attempt, ReportData

LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
          "font": {"size": 12}}


def progress(data: ReportData, axis: str) -> go.Figure:
    """Best-so-far against `axis`: "iteration", "time" or "cost"."""
    divisor, time_label = style.time_axis(data.attempts[-1].elapsed_s if data.attempts else 0)
    points = data.best_path
    xs: list[float]
    if axis == "iteration":
        xs, label = [p.iteration for p in points], "iteration"
    elif axis == "time":
        xs, label = [p.elapsed_s / divisor for p in points], time_label
    else:
        xs, label = [p.cost_usd for p in points], "cumulative cost (USD)"
    hover = [f"best {p.score:.6g} {escape(data.unit)}<br>commit {escape(p.commit)}"
             f"<br>iteration {p.iteration}" for p in points]
    fig = go.Figure(go.Scatter(x=xs, y=[p.score for p in points], mode="lines+markers",
                               line={"shape": "hv", "color": style.FIXED["accepted (best)"]},
                               hovertext=hover, hoverinfo="text", name="best so far"))
    title = {"iteration": "Best so far by iteration", "time": "Best so far by wall time",
             "cost": "Best so far by cost"}[axis]
    if axis == "cost" and not data.total_cost:
        title += " (no cost recorded)"
    fig.update_layout(**LAYOUT, title=title, height=330, showlegend=False,
                      xaxis_title=label, yaxis_title=data.score_label)
    if style.log_scale([p.score for p in points]):
        fig.update_yaxes(type="log", dtick="D2")
    return fig


def _hover(a: Attempt, unit: str) -> str:
    lines = [f"#{a.iteration} {escape(a.category)}"]
    if a.score is not None:
        lines.append(f"score {a.score:.6g} {escape(unit)}")
    if a.ratio is not None:
        lines.append(f"ratio to incumbent {a.ratio:.3f}")
    for text in (a.note, a.message):
        if text:
            lines.append(escape(style.short(text, 120)))
    return "<br>".join(lines)


def attempts(data: ReportData) -> go.Figure:
    """Every attempt: measured ones by score (top), the rest in a strip by category."""
    strip = any(a.score is None for a in data.attempts)
    fig = make_subplots(rows=2 if strip else 1, cols=1, shared_xaxes=True,
                        row_heights=[0.75, 0.25] if strip else None, vertical_spacing=0.05)
    colours = style.palette(data.categories)
    for cat in sorted({a.category for a in data.attempts}, key=style.order):
        group = [a for a in data.attempts if a.category == cat]
        scored = [a for a in group if a.score is not None]
        unscored = [a for a in group if a.score is None]
        marker = {"color": colours[cat], "size": 9, "line": {"width": 0.5,
                                                                  "color": "#333"}}
        for row, members in ((1, scored), (2, unscored)):
            if not members:
                continue
            fig.add_trace(go.Scatter(
                x=[a.iteration for a in members],
                y=[a.score for a in members] if row == 1 else [escape(cat)] * len(members),
                mode="markers", marker=marker, name=escape(cat), legendgroup=cat,
                showlegend=row == 1 or not scored, hovertext=[_hover(a, data.unit)
                                                              for a in members],
                hoverinfo="text"), row=row, col=1)
    path = data.best_path
    fig.add_trace(go.Scatter(x=[p.iteration for p in path], y=[p.score for p in path],
                             mode="lines", line={"shape": "hv", "color": "#222", "width": 1},
                             name="best so far", hoverinfo="skip"), row=1, col=1)
    fig.update_layout(**LAYOUT, title="Every attempt, coloured by outcome", height=520,
                      legend={"orientation": "h", "y": -0.12})
    fig.update_yaxes(title_text=data.score_label, row=1, col=1)
    if strip:
        fig.update_yaxes(title_text="no score", row=2, col=1, type="category")
    fig.update_xaxes(title_text="iteration", row=2 if strip else 1, col=1)
    if style.log_scale([a.score for a in data.attempts if a.score is not None]
                       + [p.score for p in path]):
        fig.update_yaxes(type="log", dtick="D2", row=1, col=1)
    return fig


def _empty(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 16})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)


def heatmap(data: ReportData) -> go.Figure:
    """Per-case speedup against the seed; * marks the cases each commit holds now."""
    h = data.heatmap
    fig = go.Figure()
    if h.rows and h.cases:
        z = [[math.log2(v) if v else None for v in line] for line in h.speedup]
        text = [[("" if v is None else f"x{v:.2f}") + ("*" if held else "")
                 for v, held in zip(line, holds, strict=True)]
                for line, holds in zip(h.speedup, h.holds, strict=True)]
        span = max((abs(v) for line in z for v in line if v is not None), default=1.0) or 1.0
        fig.add_trace(go.Heatmap(
            z=z, x=[escape(c) for c in h.cases], y=[escape(r) for r in h.rows], text=text,
            texttemplate="%{text}", colorscale="RdYlGn", zmid=0, zmin=-span, zmax=span,
            colorbar={"title": {"text": "log2 speedup"}},
            hovertemplate="%{y}<br>%{x}: %{text} vs seed<extra></extra>"))
        fig.update_yaxes(autorange="reversed")
    else:
        _empty(fig, "no winners yet")
    fig.update_layout(**LAYOUT, title="Per-case speedup vs seed (* holds the case)",
                      height=max(320, 120 + 28 * len(h.rows)) if h.rows else 200)
    return fig


def failures(data: ReportData) -> go.Figure:
    fig = go.Figure()
    colours = style.palette(data.categories)
    bars = list(reversed(data.failures))  # most frequent on top
    if bars:
        fig.add_trace(go.Bar(
            x=[b.count for b in bars], y=[escape(style.short(b.signature, 60)) for b in bars],
            orientation="h", marker={"color": [colours[f"failed: {b.kind}"] for b in bars]},
            hovertext=[f"{b.count}x {escape(b.signature)}" for b in bars], hoverinfo="text"))
    else:
        _empty(fig, "no failures recorded")
    fig.update_layout(**LAYOUT, title="Failure signatures", xaxis_title="attempts",
                      height=max(320, 120 + 26 * len(bars)) if bars else 200)
    fig.update_layout(margin={"l": 20})
    fig.update_yaxes(automargin=True)
    return fig
