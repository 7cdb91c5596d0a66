"""Generic mode: improve any file in any git repository against any metric a command prints.

    ratchet init --edit fib.py --run "python bench.py" --metric-regex "time=(\\S+)"
    ratchet run <tag>

See docs/your-own-project.md.
"""

from __future__ import annotations

from typing import Any

from ..experiment import Experiment
from .adapter import GenericAdapter
from .results import ResultsReporter


def session_parts(exp: Experiment, reporter: Any) -> tuple[Any, GenericAdapter | None]:
    """For `ratchet run`: (reporter, adapter); the adapter is None for ordinary experiments."""
    if exp.generic is None:
        return reporter, None
    adapter = GenericAdapter(exp)
    adapter.prepare()
    return ResultsReporter(reporter, exp.root), adapter


__all__ = ["GenericAdapter", "ResultsReporter", "session_parts"]
