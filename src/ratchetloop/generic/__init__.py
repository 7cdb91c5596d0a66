"""Generic mode: improve any file in any git repository against any metric a command prints.

    ratchet init --tag fib --edit fib.py --run "python3 bench.py" --metric-regex "us=(\\S+)"
    ratchet run fib --model <model>

See docs/your-own-project.md. Imports are lazy: the sandboxed metric child
(ratchetloop.generic.child) must start without numpy/scipy.
"""

from __future__ import annotations

from typing import Any


def session_parts(exp: Any, reporter: Any) -> tuple[Any, Any]:
    """For `ratchet run`: (reporter, workspace); the workspace is None (the loop's default,
    the experiment folder) for ordinary experiments."""
    if exp.generic is None:
        return reporter, None
    from .results import ResultsReporter
    from .workspace import GenericWorkspace

    workspace = GenericWorkspace(exp)
    workspace.notify = reporter.message  # the acceptance mode it picks, and why
    workspace.prepare()
    return ResultsReporter(reporter, exp.root, list(workspace.spec.metrics)), workspace


__all__ = ["session_parts"]
