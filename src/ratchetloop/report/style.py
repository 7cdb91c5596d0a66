"""One colour per attempt category, shared by the HTML and the PNG so both read alike.

Categories come from recorded data, so a status this version has never heard of (a newer
run's) still gets a colour instead of an error."""

from __future__ import annotations

from ..memory import _short

FIXED = {
    "accepted (best)": "#1a9850",
    "accepted (specialist)": "#4575b4",
    "rejected": "#9e9e9e",
    "duplicate": "#b39ddb",
    "interrupted": "#ff9800",
}
# failure kinds: warm colours; anything else: a palette that avoids the fixed ones
FAILED = ["#d73027", "#f46d43", "#a50026", "#e6550d", "#c51b7d", "#fdae61", "#8c2d04"]
OTHER = ["#8c564b", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2", "#393b79"]


def palette(categories: list[str]) -> dict[str, str]:
    """A colour for every category of one report: fixed ones as FIXED, failure kinds and
    unknown statuses in order through their palettes, so the kinds of a report differ."""
    out: dict[str, str] = {}
    failed = other = 0
    for cat in sorted(set(categories), key=order):
        if cat in FIXED:
            out[cat] = FIXED[cat]
        elif cat.startswith("failed"):
            out[cat], failed = FAILED[failed % len(FAILED)], failed + 1
        else:
            out[cat], other = OTHER[other % len(OTHER)], other + 1
    return out


def order(category: str) -> tuple[int, str]:
    """Legend order: accepted, rejected, duplicate, interrupted, failures, then anything
    new."""
    ranks = list(FIXED)
    if category in ranks:
        return (ranks.index(category), category)
    return (len(ranks) + (0 if category.startswith("failed") else 1), category)


def log_scale(values: list[float]) -> bool:
    """Whether a score axis reads better on a log scale: all positive, spanning over 8x."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 8


def time_axis(max_seconds: float) -> tuple[float, str]:
    """Divisor and axis label for wall time: seconds for short runs, minutes, or hours."""
    if max_seconds >= 3 * 3600:
        return 3600.0, "wall time of attempts (hours)"
    if max_seconds >= 180:
        return 60.0, "wall time of attempts (minutes)"
    return 1.0, "wall time of attempts (seconds)"


def short(text: str, limit: int) -> str:
    """One line, cut to `limit` characters (axis labels; the hover shows it whole)."""
    return _short(text, limit)
