"""results.tsv (commit, metric, status, description) and a progress line every 10 iterations.

It is a Reporter wrapped around whatever reporter the run already has, so the core loop
needs no knowledge of it. The file is untracked (listed in .git/info/exclude by init).

status: keep (accepted), crash (the run or the reply failed), discard (rejected, including
the verdict-wall failures `integrity`, `implausible` and `check`: the candidate ran, the
loop refused its claim). A flagged implausible winner is a keep whose description says
"[implausible: ...]".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..loop import Outcome
from ..scores import Scores

HEADER = "commit\tmetric\tstatus\tdescription\n"
REFUSED = {"integrity", "implausible", "check"}  # ran, but the claim was refused: discard
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


class ResultsReporter:
    def __init__(self, inner: Any, folder: Path) -> None:
        self.inner, self.path = inner, folder / "results.tsv"
        self.counts = {"keep": 0, "discard": 0, "crash": 0}
        self.seen = 0

    def phase(self, iteration: int, name: str) -> None:
        self.inner.phase(iteration, name)

    def message(self, text: str) -> None:
        self.inner.message(text)

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
        row = f"{outcome.commit or '-'}\t{metric}\t{status}\t{description}\n"
        new = not self.path.is_file()
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write((HEADER if new else "") + row)
        if self.seen % PROGRESS_EVERY == 0:
            self.inner.message(progress_line(outcome.iteration, scores, self.counts))


def progress_line(iteration: int, scores: Scores, counts: dict[str, int]) -> str:
    best, seed = scores.best, scores.seed
    best_text = f"{best.score:.6g} ({best.commit})" if best else "seed"
    seed_text = f"{seed.score:.6g}" if seed else "?"
    return (f"progress @ iteration {iteration}: best {best_text}, seed {seed_text};"
            f" keep {counts['keep']} / discard {counts['discard']} / crash {counts['crash']}")
