"""Where candidates live and how they are judged: the loop's one seam between modes.

The loop (loop.py) never asks which mode it runs in. It holds a `Workspace`, which turns a
reply into a candidate, evaluates it against references, says what a statistical decision
means for it, and commits winners. Two implementations:

* `ExperimentFolder` (here): an experiment folder with its own eval.py, prompt.py and
  security.py; winners are committed on the user's branch together with SCORES, MEMORY and
  winners/.
* `GenericWorkspace` (generic/workspace.py): any file in any repository, the user's command
  as the metric, winners committed on a ratchet/<tag> branch, state kept out of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import evaluate, gitops
from .evaluate import EvalResult
from .experiment import Experiment
from .extract import Extracted, extract
from .files import atomic_write_text
from .measure import Decision
from .proposers.base import Proposal
from .runs import RunRecord

# Sends a follow-up prompt (a fix request) through the run's proposer; the loop counts its
# usage against the budgets. Raises ProposalFailed like any request.
FollowUp = Callable[[str], Proposal]


@dataclass
class Judgement:
    """What a decision means here: a new best, and the cases the candidate now holds."""

    is_best: bool
    cases_won: list[str]


class Evaluator(Protocol):
    """Where an experiment folder's evaluations run: this host (`LocalEvaluator`) or the
    bench nodes of a Ray cluster (`ratchetloop.cluster.RayEvaluator`). A candidate and its
    references are always timed together, in one call, on one host."""

    slots: int  # evaluations that may run at once: one per benchmark host

    def run(self, exp: Experiment, candidate_source: str, references: dict[str, str], *,
            seed: int, validate: bool = True, keep_workdir: Path | None = None,
            progress: Callable[[Any], None] | None = None) -> EvalResult:
        """evaluate.run_eval's contract: never raises for a candidate's faults."""
        ...

    def close(self) -> None: ...


class LocalEvaluator:
    """This host: one benchmark slot, held with the host-wide benchmark lock."""

    slots = 1

    def run(self, exp: Experiment, candidate_source: str, references: dict[str, str], *,
            seed: int, validate: bool = True, keep_workdir: Path | None = None,
            progress: Callable[[Any], None] | None = None) -> EvalResult:
        return evaluate.run_eval(exp, candidate_source, references, seed=seed,
                                 validate=validate, keep_workdir=keep_workdir,
                                 progress=progress)

    def close(self) -> None:
        return None


class Workspace(Protocol):
    def extract(self, text: str) -> Extracted:
        """The candidate in a reply, or ExtractionError."""
        ...

    def evaluate(self, n: int, candidate: Extracted, references: dict[str, str],
                 run: RunRecord, follow_up: FollowUp | None) -> EvalResult:
        """Iteration n's candidate against the references (name -> source), paired rounds;
        `follow_up` is None when the proposer cannot answer a follow-up prompt."""
        ...

    def baseline(self, source: str, references: dict[str, str], *, seed: int,
                 validate: bool = True) -> EvalResult:
        """A plain evaluation: the seed's baseline, or the best re-measured for drift."""
        ...

    def judge(self, decision: Decision) -> Judgement:
        """The mode's rules on top of the statistics (generic mode: the size rule)."""
        ...

    def commit(self, candidate: Extracted, message: str) -> str:
        """Commit a winner; its short hash."""
        ...

    def record(self, paths: list[Path], message: str) -> None:
        """Commit the loop's state files, where this mode keeps them (once per run that
        accepted something: each winner's own commit already carries its row)."""
        ...


class ExperimentFolder:
    """An experiment folder: eval.py judges, the target file is committed in place."""

    def __init__(self, exp: Experiment, repo: Path, evaluator: Evaluator | None = None) -> None:
        self.exp, self.repo = exp, repo
        self.evaluator: Evaluator = evaluator or LocalEvaluator()
        self._git: gitops.CommitContext | None = None  # found at the first commit

    def _context(self) -> gitops.CommitContext:
        if self._git is None:
            self._git = gitops.CommitContext.of(self.repo)
        return self._git

    def extract(self, text: str) -> Extracted:
        return extract(text, self.exp.target.function, self.exp.target.language)

    def evaluate(self, n: int, candidate: Extracted, references: dict[str, str],
                 run: RunRecord, follow_up: FollowUp | None) -> EvalResult:
        return self.evaluator.run(self.exp, candidate.source, references, seed=n,
                                  keep_workdir=run.path, progress=run.progress)

    def baseline(self, source: str, references: dict[str, str], *, seed: int,
                 validate: bool = True) -> EvalResult:
        return self.evaluator.run(self.exp, source, references, seed=seed, validate=validate)

    def judge(self, decision: Decision) -> Judgement:
        return Judgement(is_best=decision.overall.verdict == "better",
                         cases_won=decision.better_cases)

    def commit(self, candidate: Extracted, message: str) -> str:
        atomic_write_text(self.exp.candidate_path, candidate.source)
        return gitops.commit_paths(self.repo, [self.exp.candidate_path], message,
                                   context=self._context())

    def record(self, paths: list[Path], message: str) -> None:
        gitops.commit_paths(self.repo, paths, message, context=self._context())
