"""report.html: one self-contained page (plotly's JavaScript inlined, nothing fetched).

It opens offline, from a mail attachment or a CI artefact alike. All text from the records
is escaped; the only markup is ours.
"""

from __future__ import annotations

from html import escape

import plotly.io as pio
from plotly.offline import get_plotlyjs

from . import figures
from .data import ReportData, Winner

# div id -> what it shows (the browser test checks that each one rendered)
PANELS = {
    "best-iteration": "best so far by iteration",
    "best-time": "best so far by wall time",
    "best-cost": "best so far by cost",
    "attempts": "every attempt by outcome",
    "heatmap": "per-case speedup of winners and specialists",
    "failures": "failure signatures",
}
CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": "hover",
          "modeBarButtonsToRemove": ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "pan2d",
                                     "autoScale2d"]}  # zoom by dragging; reset; save as png

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { margin: 0 0 4px 0; font-size: 24px; }
.summary { color: #444; margin: 0 0 16px 0; line-height: 1.5; }
.grid3 { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 12px; }
.panel { border: 1px solid #e3e3e3; border-radius: 6px; padding: 4px; margin-bottom: 12px; }
table.winners { border-collapse: collapse; width: 100%; font-size: 13px; }
table.winners th, table.winners td { border-bottom: 1px solid #e3e3e3; padding: 6px;
  text-align: left; vertical-align: top; }
tr.winner-row.best td:first-child { border-left: 4px solid #1a9850; }
tr.winner-row.nonbest td:first-child { border-left: 4px solid #4575b4; }
pre.diff { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; margin: 0; }
pre.diff .add { color: #1a7f37; } pre.diff .del { color: #cf222e; }
pre.diff .hunk { color: #6f42c1; } pre.diff .file { color: #555; font-weight: bold; }
.note { white-space: pre-wrap; }
td.num { white-space: nowrap; }
"""


def render(data: ReportData) -> str:
    plots = {
        "best-iteration": figures.progress(data, "iteration"),
        "best-time": figures.progress(data, "time"),
        "best-cost": figures.progress(data, "cost"),
        "attempts": figures.attempts(data),
        "heatmap": figures.heatmap(data),
        "failures": figures.failures(data),
    }
    div = {key: pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=key,
                            config=CONFIG, default_height=f"{fig.layout.height}px")
           for key, fig in plots.items()}

    def panel(key: str) -> str:
        return f'<div class="panel" title="{escape(PANELS[key])}">{div[key]}</div>'

    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ratchetloop report: {escape(data.experiment)}</title>",
        f"<style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>ratchetloop report: {escape(data.experiment)}</h1>",
        _summary(data),
        '<div class="grid3">', *(panel(k) for k in ("best-iteration", "best-time",
                                                      "best-cost")), "</div>",
        panel("attempts"),
        panel("heatmap"), panel("failures"),
        _winners(data),
        "</body></html>",
    ]) + "\n"


def _summary(data: ReportData) -> str:
    c = data.counts
    unit = f" {escape(data.unit)}" if data.unit else ""
    seed = "n/a" if data.seed_score is None else f"{data.seed_score:.6g}{unit}"
    best = "n/a" if data.best_score is None else f"{data.best_score:.6g}{unit}"
    if data.best_commit:
        best += f" (commit {escape(data.best_commit)})"
    items = [
        f"{escape(data.mode)} <code>{escape(str(data.folder))}</code>;"
        f" {escape(data.direction.replace('_', ' '))}; generated {escape(data.generated)}",
        f"seed {seed}; best {best}",
        f"attempts {c.get('attempts', 0)}: accepted {c.get('accepted', 0)}, rejected"
        f" {c.get('rejected', 0)}, failed {c.get('failed', 0)}, duplicates"
        f" {c.get('duplicates', 0)}",
        f"usage: {escape(data.usage)}",
        *(escape(n) for n in data.notes),
    ]
    return '<p class="summary">' + "<br>".join(items) + "</p>"


def _ratio(w: Winner) -> str:
    if w.ratio is None:
        return "n/a"
    text = f"{w.ratio:.4f}"
    if w.ci is not None:
        text += f" [{w.ci[0]:.4f}, {w.ci[1]:.4f}]"
    return text


def _winners(data: ReportData) -> str:
    head = ('<h2 id="winners">Winners</h2><p class="summary">ratio = candidate / the best it'
            " beat, with the confidence interval of the decision that accepted it (at that"
            " look's level); diff against the best of its time.</p>")
    if not data.winners:
        return head + '<p class="no-winners">No winner yet: nothing was proven better than the'\
                      " seed.</p>"
    names = sorted({name for w in data.winners for name in w.metrics})  # secondary metrics
    rows = ["<table class=\"winners\"><thead><tr><th>#</th><th>commit</th><th>role</th>"
            "<th>score</th><th>ratio [CI]</th>"
            + "".join(f'<th class="metric">{escape(n)}</th>' for n in names)
            + "<th>model</th><th>note</th></tr></thead><tbody>"]
    unit = f" {escape(data.unit)}" if data.unit else ""
    for w in data.winners:
        role = "best" if w.is_current_best else ("former best" if w.kind == "best"
                                                 else "specialist")
        if w.cases_won:
            role += f" ({', '.join(w.cases_won)})"
        kind = "best" if w.kind == "best" else "nonbest"
        rows.append(
            f'<tr class="winner-row {kind}" data-commit="{escape(w.commit)}">'
            f"<td>{w.iteration}</td><td><code>{escape(w.commit)}</code></td>"
            f'<td>{escape(role)}</td><td class="num">{w.score:.6g}{unit}</td>'
            f'<td class="num">{_ratio(w)}</td>'
            + "".join(f'<td class="num metric">{_number(w.metrics.get(n))}</td>' for n in names)
            + f'<td>{escape(w.model)}</td><td class="note">{escape(w.note)}</td></tr>')
        rows.append(f'<tr class="winner-diff"><td></td><td colspan="{6 + len(names)}"><details>'
                    "<summary>diff"
                    f" against {escape(w.previous)}</summary>{_diff(w.diff)}</details></td></tr>")
    rows.append("</tbody></table>")
    return head + "".join(rows)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _diff(diff: str | None) -> str:
    if diff is None:
        return "<p>source not available (winners/ archive missing)</p>"
    if not diff:
        return "<p>no difference</p>"
    out = []
    for line in diff.splitlines():
        cls = ("file" if line.startswith(("+++", "---")) else "add" if line.startswith("+")
               else "del" if line.startswith("-") else "hunk" if line.startswith("@@") else "")
        text = escape(line)
        out.append(f'<span class="{cls}">{text}</span>' if cls else text)
    return '<pre class="diff">' + "\n".join(out) + "</pre>"
