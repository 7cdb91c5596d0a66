"""Experiment-local memory: what worked, what keeps failing, what is still unexplored.

MEMORY.json is the structured truth; MEMORY.md is rendered from it for prompts and is kept
under a fixed size however long the run, by ranking and ageing out entries.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from .files import atomic_write_json, atomic_write_text, read_model
from .fmt import times

MEMORY_MD_LIMIT = 3500  # characters; the prompt-facing memory never grows past this
STOPWORDS = {"the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "use", "try",
             "loop", "loops", "by", "into", "over", "instead", "from", "per"}


class Worked(BaseModel):
    iteration: int
    model: str
    note: str
    kind: str  # "best" or "specialist"
    speedup: float  # against the incumbent it beat (>1 is better)
    score: float
    cases: list[str] = Field(default_factory=list)
    commit: str | None = None


class FailureGroup(BaseModel):
    signature: str
    kind: str
    count: int = 0
    first_iteration: int
    last_iteration: int
    example: str  # one short example (message), for the prompt
    notes: list[str] = Field(default_factory=list)  # what the failing attempts said they did


class Tried(BaseModel):
    iteration: int
    note: str
    speedup: float | None = None  # measured against the incumbent, not accepted


class Idea(BaseModel):
    text: str
    source: str  # "hypothesis" or "model"
    tried: bool = False


class Memory(BaseModel):
    worked: list[Worked] = Field(default_factory=list)
    failing: dict[str, FailureGroup] = Field(default_factory=dict)
    tried: list[Tried] = Field(default_factory=list)
    unexplored: list[Idea] = Field(default_factory=list)
    seen: dict[str, str] = Field(default_factory=dict)  # fingerprint -> outcome, for dedup
    duplicates: int = 0

    # -- updates -------------------------------------------------------------------------
    def add_hypotheses(self, hypotheses: list[str]) -> None:
        known = {i.text for i in self.unexplored}
        for text in hypotheses:
            if text not in known:
                self.unexplored.append(Idea(text=text, source="hypothesis"))

    def add_ideas(self, ideas: list[str]) -> None:
        known = {i.text.lower() for i in self.unexplored}
        for text in ideas:
            if text.lower() not in known and len(self.unexplored) < 40:
                self.unexplored.append(Idea(text=text, source="model"))

    def mark_tried(self, note: str) -> None:
        """An idea counts as tried once an attempt's note covers most of its words."""
        words = _content_words(note)
        for idea in self.unexplored:
            idea_words = _content_words(idea.text)
            if idea_words and len(idea_words & words) >= max(1, (len(idea_words) + 1) // 2):
                idea.tried = True

    def record_failure(self, iteration: int, kind: str, message: str, detail: str,
                       note: str) -> str:
        sig = signature(kind, message, detail)
        group = self.failing.get(sig)
        if group is None:
            group = FailureGroup(signature=sig, kind=kind, first_iteration=iteration,
                                 last_iteration=iteration, example=_short(message, 200))
            self.failing[sig] = group
        group.count += 1
        group.last_iteration = iteration
        if note and note not in group.notes:
            group.notes = (group.notes + [_short(note, 120)])[-3:]
        return sig

    def record_tried(self, iteration: int, note: str, speedup: float | None) -> None:
        self.tried.append(Tried(iteration=iteration, note=_short(note, 160), speedup=speedup))
        self.tried = self.tried[-200:]

    def record_worked(self, item: Worked) -> None:
        self.worked.append(item)

    # -- rendering -------------------------------------------------------------------------
    def render(self, limit: int = MEMORY_MD_LIMIT) -> str:
        """MEMORY.md: ranked sections, trimmed from the least useful end until it fits."""
        worked = sorted(self.worked, key=lambda w: -w.speedup)
        failing = sorted(self.failing.values(), key=lambda g: (-g.count, -g.last_iteration))
        tried = _summarise_tried(self.tried)
        ideas = [i for i in self.unexplored if not i.tried]
        caps = [8, 8, 8, 8]
        while True:
            text = _render_sections(worked[: caps[0]], failing[: caps[1]], tried[: caps[2]],
                                    ideas[: caps[3]], self.duplicates)
            if len(text) <= limit or sum(caps) == 0:
                return text if len(text) <= limit else text[: limit - 20] + "\n…(trimmed)\n"
            biggest = max(range(4), key=lambda k: caps[k])
            caps[biggest] -= 1


def _render_sections(worked: list[Worked], failing: list[FailureGroup], tried: list[str],
                     ideas: list[Idea], duplicates: int) -> str:
    lines = ["# Memory", "", "## What has worked"]
    lines += [
        f"- {times(w.speedup)} ({w.kind}{': ' + ', '.join(w.cases) if w.cases else ''},"
        f" iteration {w.iteration}): {w.note}"
        for w in worked
    ] or ["- nothing accepted yet"]
    lines += ["", "## What keeps failing (grouped by cause)"]
    for g in failing:
        lines.append(f"- {g.count}x {g.kind}: {g.example}")
        if g.notes:
            lines.append(f"  (attempts: {'; '.join(g.notes[-2:])})")
    if not failing:
        lines.append("- no failures recorded")
    lines += ["", "## Tried, measured, not better"]
    lines += [f"- {t}" for t in tried] or ["- none yet"]
    if duplicates:
        lines.append(f"- {duplicates} proposals repeated code already evaluated: try something new")
    lines += ["", "## Still unexplored"]
    lines += [f"- {i.text}" for i in ideas] or ["- (no open ideas: propose one with `Idea: ...`)"]
    return "\n".join(lines) + "\n"


def _summarise_tried(tried: list[Tried]) -> list[str]:
    """Most recent first, identical notes merged with a count."""
    seen: dict[str, list[Tried]] = {}
    for t in reversed(tried):
        seen.setdefault(t.note.lower(), []).append(t)
    out = []
    for group in seen.values():
        best = max((t.speedup for t in group if t.speedup), default=None)
        measured = f", best {times(best)} vs incumbent" if best else ""
        count = f"{len(group)}x " if len(group) > 1 else ""
        out.append(f"{count}{group[0].note}{measured}")
    return out


def signature(kind: str, message: str, detail: str = "") -> str:
    """Group failures by cause: strip paths, line numbers, names and numbers."""
    first = _first_diagnostic(detail) if kind == "build_error" else ""
    text = first or message
    text = re.sub(r"[\w./-]*\.(?:c|h|py|cc|cpp):\d+(?::\d+)?:?", "", text)
    text = re.sub(r"‘[^’]*’|'[^']*'|\"[^\"]*\"", "'X'", text)
    text = re.sub(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:e[+-]?\d+)?", "N", text)
    text = re.sub(r"\s+", " ", text).strip().lower()
    return f"{kind}: {text[:120]}"


def _first_diagnostic(detail: str) -> str:
    for line in detail.splitlines():
        if "error:" in line:
            return line[line.index("error:"):]
    return ""


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS and len(w) > 2}


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def load(folder: Path) -> Memory:
    path = folder / "MEMORY.json"
    return read_model(path, Memory) if path.exists() else Memory()


def save(folder: Path, memory: Memory) -> None:
    atomic_write_json(folder / "MEMORY.json", memory)
    atomic_write_text(folder / "MEMORY.md", memory.render(), durable=False)
