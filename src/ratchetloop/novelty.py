"""Novelty filter (`--novelty THRESHOLD`): a candidate nearly identical to code already
evaluated is not evaluated again.

Exact repeats are caught by fingerprint (loop.skip_duplicate). This catches the near ones a
model keeps sending: the same code with a renamed helper, one extra statement, `range(0, n)`
for `range(n)`. Both sources are reduced to tokens without comments, docstrings or layout,
and compared with difflib's ratio (2 * matching tokens / all tokens); at or above the
threshold the candidate counts as a duplicate. Literals are kept, so a changed constant is
a change: with a small function one token is already a few per cent, which is why the
filter is off by default and meant for language models (the offline tuner changes only
numbers, and would be filtered at any threshold near 1).

"Already evaluated" means what reached the evaluator: runs/<n>/ with a result.json, the
seed and the scoreboard's winners. The index reads what is new on disk before each check,
so a resumed run, or an evaluation another stage finished, is seen without bookkeeping.

Anchors: OpenEvolve and ShinkaEvolve reject proposals too similar to programs in their
archive (by embedding, with an LLM judge in between); here no model, no embeddings: a
deterministic, free check that runs in milliseconds.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import RatchetError

if TYPE_CHECKING:
    from .experiment import Experiment

DEFAULT_THRESHOLD = 0.97

# C-family (and the fallback for any language that is not Python): comments, literals,
# names, numbers, then any other single character.
_C_TOKENS = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'"
    r"|[A-Za-z_]\w*|\d[\w.]*(?:[eE][+-]?\d+)?|\S", re.DOTALL)
_PY_FALLBACK = re.compile(
    r"#[^\n]*|\"\"\".*?\"\"\"|'''.*?'''|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'"
    r"|[A-Za-z_]\w*|\d[\w.]*(?:[eE][+-]?\d+)?|\S", re.DOTALL)
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_STATEMENT_START = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}


def tokens(source: str, language: str = "c") -> list[str]:
    """The source as tokens, without comments, docstrings or whitespace (Python keeps its
    statement and block structure: NEWLINE, INDENT and DEDENT are tokens)."""
    if language == "python":
        try:
            return _python_tokens(source)
        except (tokenize.TokenError, IndentationError, SyntaxError):
            return [t for t in _PY_FALLBACK.findall(source) if not t.startswith("#")
                    and not t.startswith(('"""', "'''"))]
    return [t for t in _C_TOKENS.findall(source) if not t.startswith(("//", "/*"))]


def _python_tokens(source: str) -> list[str]:
    out: list[str] = []
    kinds: list[int] = []
    raw = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
           if t.type not in _SKIP]
    for i, tok in enumerate(raw):
        after = raw[i + 1].type if i + 1 < len(raw) else tokenize.NEWLINE
        before = kinds[-1] if kinds else tokenize.NEWLINE
        if tok.type == tokenize.STRING and before in _STATEMENT_START and (
                after == tokenize.NEWLINE):
            continue  # a docstring, or any bare string statement: no effect
        if tok.type == tokenize.NEWLINE and before in _STATEMENT_START:
            continue  # the end of a dropped docstring's line
        out.append({tokenize.NEWLINE: "<nl>", tokenize.INDENT: "<in>",
                    tokenize.DEDENT: "<de>"}.get(tok.type, tok.string))
        kinds.append(tok.type)
    return out


def similarity(a: list[str], b: list[str]) -> float:
    """difflib's ratio of two token lists: 1.0 for equal lists, 0.0 for nothing shared."""
    if not a and not b:
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


@dataclass
class Match:
    label: str  # what it resembles: "attempt 12", "winner 1a2b3c4", "seed"
    ratio: float


@dataclass
class Index:
    """The token lists of what was evaluated, refreshed from disk before each check."""

    folder: Path  # the experiment folder (runs/, winners/)
    candidate_name: str  # runs/<n>/<this>, e.g. candidate.py
    winner_name: str  # winners/<sha>/<this>, e.g. candidate.py
    language: str
    threshold: float = DEFAULT_THRESHOLD
    entries: list[tuple[str, list[str]]] = field(default_factory=list)
    _loaded: set[str] = field(default_factory=set)

    def add(self, label: str, source: str) -> None:
        if label not in self._loaded:
            self._loaded.add(label)
            self.entries.append((label, tokens(source, self.language)))

    def refresh(self, winners: Iterable[str] = ()) -> None:
        """Read the runs that reached the evaluator since the last look, and `winners`
        (the scoreboard's commits, from winners/: a rolled-back incumbent has no run
        here). Winners kept from before seed.py are not on the scoreboard: a model may
        find them again, as it may repeat their exact code."""
        runs = self.folder / "runs"
        for sub in sorted(runs.iterdir()) if runs.is_dir() else []:
            label = f"attempt {sub.name.lstrip('0') or '0'}"
            if label in self._loaded or not (sub / "result.json").is_file():
                continue
            self._add_file(label, sub / self.candidate_name)
        for sha in winners:
            self._add_file(f"winner {sha}", self.folder / "winners" / sha / self.winner_name)

    def _add_file(self, label: str, path: Path) -> None:
        if label in self._loaded or not path.is_file():
            return  # a missing file may appear later (a winner archived after this look)
        try:
            self.add(label, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            self._loaded.add(label)  # unreadable: nothing to compare with, never retried

    def nearest(self, source: str) -> Match | None:
        """The most similar evaluated source at or above the threshold, else None. difflib's
        cheap upper bounds skip most comparisons before the full one."""
        mine = tokens(source, self.language)
        matcher = SequenceMatcher(None, autojunk=False)
        matcher.set_seq2(mine)  # seq2 is the one difflib indexes: index the candidate once
        best: Match | None = None
        for label, theirs in self.entries:
            matcher.set_seq1(theirs)
            floor = best.ratio if best else self.threshold
            if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
                continue
            ratio = matcher.ratio()
            if ratio > floor or (best is None and ratio == floor):  # ties: the earliest
                best = Match(label, ratio)
        return best


def make_index(exp: Experiment, threshold: float | None) -> Index | None:
    """The --novelty index of an experiment (None when the filter is off), seed included."""
    if threshold is None:
        return None
    if not 0 < threshold <= 1:
        raise RatchetError(f"the novelty threshold is a share of tokens in (0, 1], such as"
                           f" {DEFAULT_THRESHOLD}; got {threshold}")
    target = Path(exp.target.file)
    index = Index(exp.root, f"candidate{target.suffix}", target.name, exp.target.language,
                  threshold)
    index.add("seed", exp.naive_path.read_text(encoding="utf-8"))
    return index


def check_message(match: Match, threshold: float) -> str:
    return (f"too similar to {match.label}, already evaluated: {match.ratio:.1%} of tokens"
            f" shared (novelty threshold {threshold:.1%})")
