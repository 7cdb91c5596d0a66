"""runs/<n>/: every attempt's full chain of cause and effect, one atomic file at a time."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .status import TimingProgress


class RunRecord:
    """Writes the files of one attempt into runs/<n>/ as each step produces them."""

    def __init__(self, folder: Path, iteration: int) -> None:
        self.iteration = iteration
        self.path = folder / "runs" / f"{iteration:04d}"
        self.path.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        # hears the paired timing's progress while this attempt is measured (live view)
        self.progress: Callable[[TimingProgress], None] | None = None

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Wall time per phase, so the loop's own overhead can be told apart."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - start

    def text(self, name: str, content: str) -> None:
        atomic_write_text(self.path / name, content, durable=False)  # history, see files.py

    def json(self, name: str, data: Any) -> None:
        atomic_write_json(self.path / name, data, durable=False)


def last_iteration(folder: Path) -> int:
    """Highest attempt number on disk, so numbering survives a crash between state writes."""
    runs = folder / "runs"
    if not runs.is_dir():
        return 0
    numbers = [int(p.name) for p in runs.iterdir() if re.fullmatch(r"\d+", p.name)]
    return max(numbers, default=0)


def attempts(folder: Path) -> list[dict[str, Any]]:
    """All attempt summaries, oldest first (unreadable ones skipped)."""
    out: list[dict[str, Any]] = []
    runs = folder / "runs"
    if not runs.is_dir():
        return out
    for sub in sorted(runs.iterdir()):
        summary = sub / "attempt.json"
        if summary.is_file():
            try:
                data = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict):  # anything else is not an attempt this can show
                out.append(data)
    return out
