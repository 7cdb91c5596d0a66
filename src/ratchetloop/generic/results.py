"""results.tsv (commit, metric, named metrics, status, description) and a progress line
every 10 iterations.

The named metrics are the contract's declared ones and the sandbox's built-ins
(wall_seconds, cpu_seconds, peak_rss_mb: constraints.py), the candidate's medians, one
column each between `metric` and `status`; a run whose contract gained a metric rewrites
the header (older rows get empty cells).

It is a Reporter wrapped around whatever reporter the run already has, so the core loop
needs no knowledge of it. The file is untracked (listed in .git/info/exclude by init).

status: keep (accepted), crash (the run or the reply failed), discard (rejected, including
the verdict-wall failures `integrity`, `implausible` and `check`, and a broken
`constraint`: the candidate ran, the loop refused it). A flagged implausible winner is a
keep whose description says "[implausible: ...]".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..loop import Outcome
from ..scores import Scores
from .constraints import BUILTIN

REFUSED = {"integrity", "implausible", "check", "constraint"}  # ran, claim refused: discard
PROGRESS_EVERY = 10


def status_of(outcome: Outcome) -> str:
    if outcome.accepted:
        return "keep"
    if outcome.status == "failed" and outcome.failure_kind not in REFUSED:
        return "crash"
    return "discard"


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = lines[0].split("\t") if lines else []
    return [dict(zip(keys, line.split("\t"), strict=False)) for line in lines[1:]]


def columns_for(declared: Sequence[str]) -> list[str]:
    """results.tsv's columns: the declared metrics, then the built-ins."""
    return ["commit", "metric", *declared, *BUILTIN, "status", "description"]


class ResultsReporter:
    def __init__(self, inner: Any, folder: Path, declared: Sequence[str] = ()) -> None:
        self.inner, self.path = inner, folder / "results.tsv"
        self.columns = columns_for(declared)
        self.counts = {"keep": 0, "discard": 0, "crash": 0}
        self.seen = 0

    def phase(self, iteration: int, name: str) -> None:
        self.inner.phase(iteration, name)

    def message(self, text: str) -> None:
        self.inner.message(text)

    def timing(self, iteration: int, progress: Any) -> None:
        """The paired timing's progress, for the wrapped reporter's live view."""
        hook = getattr(self.inner, "timing", None)
        if callable(hook):
            hook(iteration, progress)

    def outcome(self, outcome: Outcome, scores: Scores) -> None:
        self.inner.outcome(outcome, scores)
        status = status_of(outcome)
        self.counts[status] += 1
        self.seen += 1
        metric = "" if outcome.score is None else f"{outcome.score:.6g}"
        row_ = scores.row(outcome.commit) if outcome.commit else None
        words = [(row_.note if row_ else outcome.note) or "no note"]  # row: after crash fixes
        if status != "keep" and outcome.message:
            words.append(f"[{outcome.failure_kind or outcome.status}: {outcome.message}]")
        description = " ".join(" ".join(words).split())
        cells = {"commit": outcome.commit or "-", "metric": metric, "status": status,
                 "description": description}
        for name, value in outcome.metrics.items():
            if name != "metric":
                cells[name] = f"{value:.6g}"
        self._append("\t".join(cells.get(c, "") for c in self.columns) + "\n")
        if self.seen % PROGRESS_EVERY == 0:
            self.inner.message(progress_line(outcome.iteration, scores, self.counts))

    def _append(self, row: str) -> None:
        header = "\t".join(self.columns) + "\n"
        if not self.path.is_file():
            atomic_write_text(self.path, header + row, durable=False)
            return
        with self.path.open(encoding="utf-8") as fh:
            first = fh.readline().rstrip("\n") + "\n"  # the header only, not the whole file
        if first == header:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(row)
            return
        old = read_rows(self.path)  # the contract's metrics changed: new header
        lines = ["\t".join(r.get(c, "") for c in self.columns) + "\n" for r in old]
        atomic_write_text(self.path, header + "".join(lines) + row, durable=False)


def progress_line(iteration: int, scores: Scores, counts: dict[str, int]) -> str:
    best, seed = scores.best, scores.seed
    best_text = f"{best.score:.6g} ({best.commit})" if best else "seed"
    seed_text = f"{seed.score:.6g}" if seed else "?"
    return (f"progress @ iteration {iteration}: best {best_text}, seed {seed_text};"
            f" keep {counts['keep']} / discard {counts['discard']} / crash {counts['crash']}")
