"""Read-only views of what a run recorded: one attempt in full (`ratchet show`) and every
attempt as rows for export (`ratchet history --json/--csv`).

Everything here reads runs/<n>/ as written by runs.RunRecord and loop.record_attempt, for
experiment folders and generic `.ratchet/<tag>` experiments alike (the loop writes the same
records for both). Records are history, possibly from older or newer versions: a missing
file, an unknown status or an odd field is shown as it is, never a crash. Text in them was
written by a model, so it is returned as plain strings; the CLI prints it without markup.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RatchetError
from .experiment import Experiment
from .files import read_text_or_empty
from .runs import attempts

# The export's columns, in order: stable across versions (new fields go at the end).
COLUMNS = ("iteration", "timestamp", "model", "status", "failure_kind", "score", "ratio",
           "ci_low", "ci_high", "commit", "cases_won", "note", "message", "prompt_tokens",
           "completion_tokens", "cached_prompt_tokens", "cache_write_tokens", "cost_usd",
           "seconds_propose", "seconds_evaluate", "seconds_total")
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cache_write_tokens",
              "cost_usd")
LOG_LIMIT = 20_000  # characters of each log shown by `show` (its tail)


@dataclass
class Section:
    """One titled part of an attempt: `kind` tells the printer how to show `body`."""

    title: str
    body: str
    kind: str = "text"  # text | code | diff
    language: str = ""  # for code: the target's language


# --------------------------------------------------------------------------- history export


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def export_row(a: dict[str, Any]) -> dict[str, Any]:
    """One attempt.json as a flat row with exactly COLUMNS (missing or odd values: empty)."""
    usage, seconds = a.get("usage"), a.get("seconds")
    usage = usage if isinstance(usage, dict) else {}
    seconds = seconds if isinstance(seconds, dict) else {}
    ci = a.get("ci")
    ci_low, ci_high = (ci[0], ci[1]) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (
        None, None)
    cases = a.get("cases_won")
    row: dict[str, Any] = {
        "iteration": _number(a.get("iteration")),
        "timestamp": _text(a.get("timestamp")),
        "model": _text(a.get("model")),
        "status": _text(a.get("status")),
        "failure_kind": _text(a.get("failure_kind")),
        "score": _number(a.get("score")),
        "ratio": _number(a.get("ratio")),
        "ci_low": _number(ci_low),
        "ci_high": _number(ci_high),
        "commit": _text(a.get("commit")),
        "cases_won": [str(c) for c in cases] if isinstance(cases, list) else [],
        "note": _text(a.get("note")),
        "message": _text(a.get("message")),
    }
    for key in USAGE_KEYS:
        row[key] = _number(usage.get(key))
    for key in ("propose", "evaluate", "total"):
        row[f"seconds_{key}"] = _number(seconds.get(key))
    return row


def export_rows(exp: Experiment) -> list[dict[str, Any]]:
    return [export_row(a) for a in attempts(exp.root)]


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, allow_nan=False) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (";".join(v) if isinstance(v, list) else "" if v is None else v)
                         for k, v in row.items()})
    return out.getvalue()


# --------------------------------------------------------------------------- one attempt


def run_dir(exp: Experiment, n: int) -> Path:
    folder = exp.path("runs", f"{n:04d}")
    if not folder.is_dir():
        known = sorted(a["iteration"] for a in attempts(exp.root)
                       if isinstance(a.get("iteration"), int))
        hint = f" (recorded: {known[0]}..{known[-1]})" if known else " (no attempts recorded)"
        raise RatchetError(f"{exp.name} has no attempt {n}{hint}")
    return folder


def _load_json(path: Path) -> Any:
    text = read_text_or_empty(path)
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # shown as it is


def _fmt(value: Any, digits: int = 6) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def summary_text(a: dict[str, Any], unit: str) -> str:
    """The attempt's header: who, when, what became of it, at what cost."""
    lines = [f"attempt {_fmt(a.get('iteration'))} at {_fmt(a.get('timestamp'))},"
             f" model {_fmt(a.get('model'))}",
             f"status: {_fmt(a.get('status')) or 'unknown'}"
             + (f" ({a['failure_kind']})" if a.get("failure_kind") else "")]
    if a.get("note"):
        lines.append(f"note: {a['note']}")
    if a.get("message"):
        lines.append(f"message: {a['message']}")
    if a.get("score") is not None:
        lines.append(f"score: {_fmt(a.get('score'))} {unit}")
    if a.get("ratio") is not None:
        ci = a.get("ci")
        ci_text = (f" [{_fmt(ci[0], 4)}, {_fmt(ci[1], 4)}]"
                   if isinstance(ci, (list, tuple)) and len(ci) == 2 else "")
        lines.append(f"ratio vs incumbent: {_fmt(a.get('ratio'), 4)}{ci_text}")
    if a.get("commit"):
        lines.append(f"commit: {a['commit']}")
    if a.get("cases_won"):
        lines.append(f"cases won: {', '.join(map(str, a['cases_won']))}")
    usage = a.get("usage")
    if isinstance(usage, dict):
        lines.append("usage: " + ", ".join(f"{k} {_fmt(v)}" for k, v in usage.items()))
    seconds = a.get("seconds")
    if isinstance(seconds, dict):
        lines.append("seconds: " + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in seconds.items()))
    return "\n".join(lines)


def decision_text(d: Any) -> str:
    """decision.json in words: the verdict overall and per case, with the rule applied."""
    if not isinstance(d, dict):
        return _fmt(d)
    lines = [f"best: {_fmt(d.get('is_best'))}; cases won: "
             f"{', '.join(map(str, d.get('cases_won') or [])) or 'none'}"]

    def one(label: str, c: Any) -> None:
        if not isinstance(c, dict):
            return
        lines.append(f"{label}: {_fmt(c.get('verdict'))}, ratio {_fmt(c.get('ratio'), 4)}"
                     f" [{_fmt(c.get('ci_low'), 4)}, {_fmt(c.get('ci_high'), 4)}],"
                     f" p={_fmt(c.get('p_value'), 2)}, rounds {_fmt(c.get('rounds'))}")
        for reason in c.get("reasons") or []:
            lines.append(f"  - {reason}")

    one("overall", d.get("overall"))
    per_case = d.get("per_case")
    if isinstance(per_case, dict):
        for case, c in per_case.items():
            one(f"case {case}", c)
    for key in ("host_warnings", "pinned_cpu", "rule"):
        if d.get(key):
            lines.append(f"{key.replace('_', ' ')}: {_fmt(d.get(key))}")
    return "\n".join(lines)


def security_text(s: Any) -> str:
    if not isinstance(s, dict):
        return _fmt(s)
    reasons = s.get("reasons") or []
    if s.get("ok"):
        return "passed"
    return "rejected:\n" + "\n".join(f"  - {r}" for r in reasons)


def incumbent_at(exp: Experiment, n: int, when: str = "") -> tuple[str, str | None]:
    """The best winner attempt n (made at `when`) was timed against: the last best accepted
    before it, or a rollback made before it, else the seed; as (commit, source), source
    None when it can no longer be read."""
    from . import scores as scores_mod

    try:
        sc = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    except RatchetError:
        return "unknown (SCORES.json unreadable)", None
    events = [(r.timestamp, r.commit) for r in sc.rows if r.kind == "best" and 0 < r.iteration < n]
    # `ratchet rollback` moves the incumbent
    events += [(rb.timestamp, rb.to) for rb in sc.rollbacks if when and rb.timestamp < when]
    # the latest by time; on a tie (same second) the one listed later: a rollback
    commit = max(enumerate(events), key=lambda e: (e[1][0], e[0]))[1][1] if events else "seed"
    return commit, winner_text(exp, commit)


def winner_text(exp: Experiment, commit: str) -> str | None:
    """A winner's source as the loop stored it (archive, else git), None if gone."""
    if commit == "seed":
        return read_text_or_empty(exp.naive_path) or None
    archived = exp.path("winners", commit, Path(exp.target.file).name)
    if archived.is_file():
        return read_text_or_empty(archived)
    try:
        if exp.generic is not None:
            from .generic.edits import to_bundle
            from .generic.winners import winner_files

            return to_bundle(winner_files(exp, commit))
        from . import gitops

        return gitops.show_file(gitops.repo_root(exp.root), commit, exp.candidate_path)
    except (RatchetError, OSError, ValueError):
        return None


def diff_text(old: str, new: str, old_name: str, new_name: str) -> str:
    return unified(old, new, old_name, new_name) or "(no difference)"


def unified(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff, every line ending in a newline; "" when the texts are equal."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 old_name, new_name)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def attempt_sections(exp: Experiment, n: int) -> list[Section]:
    """Everything recorded about attempt n, in the order it happened."""
    folder = run_dir(exp, n)
    raw = _load_json(folder / "attempt.json")
    a: dict[str, Any] = raw if isinstance(raw, dict) else {"iteration": n}
    if raw is None:
        a["status"] = "unfinished (no attempt.json: the run stopped during this attempt)"
    sections = [Section("attempt", summary_text(a, exp.unit))]

    def text(title: str, name: str, kind: str = "text") -> None:
        body = read_text_or_empty(folder / name)
        if body:
            sections.append(Section(title, body, kind))

    text("prompt", "prompt.md")
    text("reply", "reply.md")
    if not (folder / "reply.md").is_file():
        text("raw response", "response.txt")
    suffix = Path(exp.target.file).suffix
    source = read_text_or_empty(folder / f"candidate{suffix}")
    if source:
        sections.append(Section("extracted code", source, "code", exp.target.language))
        label, incumbent = incumbent_at(exp, n, str(a.get("timestamp") or ""))
        if incumbent is None:
            sections.append(Section(f"diff against incumbent {label}",
                                    "(the incumbent's source is no longer available)"))
        else:
            sections.append(Section(f"diff against incumbent {label}", diff_text(
                incumbent, source, f"incumbent ({label})", f"attempt {n}"), "diff"))
    security = _load_json(folder / "security.json")
    if security is not None:
        sections.append(Section("security verdict", security_text(security)))
    for name, title in (("review.json", "reviewer verdict"),
                        ("review_win.json", "reviewer verdict on the proven winner")):
        if (folder / name).is_file():  # --review
            from .review import describe

            sections.append(Section(title, describe(_load_json(folder / name))))
    for fix in sorted(folder.glob("fix*.*.md")):
        text(fix.stem.replace(".", " "), fix.name)
    for log in sorted(folder.glob("*.log")):
        body = read_text_or_empty(log)
        if len(body) > LOG_LIMIT:
            body = f"[... {len(body) - LOG_LIMIT} characters cut ...]\n" + body[-LOG_LIMIT:]
        sections.append(Section(f"log {log.name}", body or "(empty)"))
    result = _load_json(folder / "result.json")
    if isinstance(result, dict) and isinstance(result.get("failure"), dict):
        f = result["failure"]
        sections.append(Section("evaluation failure", f"{_fmt(f.get('kind'))}:"
                                f" {_fmt(f.get('message'))}\n{_fmt(f.get('detail'))}".rstrip()))
    decision = _load_json(folder / "decision.json")
    if decision is not None:
        sections.append(Section("decision", decision_text(decision)))
    else:
        sections.append(Section("decision", _fmt(a.get("status")) or "none recorded"))
    return sections


def plain(sections: list[Section]) -> str:
    """The attempt as plain text (piped output): no colour, no wrapping."""
    parts = []
    for s in sections:
        body = s.body if s.body.endswith("\n") else s.body + "\n"
        parts.append(f"== {s.title} ==\n{body}")
    return "\n".join(parts)
