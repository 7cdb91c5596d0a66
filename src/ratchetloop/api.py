"""The Python API: `Loop(target=..., metric=..., directives=..., proposer=...).run(n)`.

It is a front for generic mode, not another loop: it writes .ratchet/<tag>/ like
`ratchet init`, then calls the core run_loop with a GenericWorkspace. A metric may be a
command (str) or a callable `metric(target_path) -> float`. Callables never run in the
loop's process: they are pickled by reference (module + qualified name, or a helper
object from ratchetloop.metrics) and called in a child python inside the sandbox, in the
candidate's tree -- the same isolation a run command gets, and a candidate that hangs
or crashes the interpreter cannot take the loop down. The child reports the value on the
sandbox's result channel, never on stdout (generic/child.py), so nothing the metric or the
candidate prints becomes the metric. Only metrics that run no candidate code (LLMJudge)
are called in-process.

`check=` is the contract's check_command (every winner must pass it, in the sandbox, on a
clean copy of its tree); `unit=` (default: the metric's own `unit`, e.g. "s" for
LatencyMetric) turns on the plausibility rule for time metrics; `implausible="reject"`
rejects a winner whose CPU time contradicts its claim instead of flagging it.

Direction: `higher_is_better` defaults to the metric's own (`LatencyMetric` is lower is
better, `LLMJudge` and `CompositeMetric` higher); a metric that declares none -- a command,
a plain function, a `CommandNumber` without one -- is maximised unless told otherwise. An
explicit argument that contradicts the metric's declaration is refused rather than
silently optimising the wrong way; to override a metric on purpose, set its own
`higher_is_better`.

`proposer=` is a --model string, a proposer object, or several models ("a,b" or a list
of strings and proposers): a bandit then picks one per request (proposers/bandit.py).

Spending: `max_cost=` / `max_tokens=` (Options) hold every request of the run -- the
proposer's, the reviewer's and any LLMJudge's inside the metric -- and the judge's usage
counts into the run's totals (`LoopResult.usage`, SCORES.json).

Checker and novelty filter, off by default (Options): `review=` (a --model string or a
proposer) reads each candidate's diff before it is evaluated and may veto it,
`review_wins=True` asks again before a winner's commit (review.py), and `novelty=0.97`
skips candidates that nearly repeat code already evaluated (novelty.py).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import experiment as experiment_mod
from . import gitops, sandbox
from .budget import BudgetExceeded, attach_budget
from .errors import RatchetError
from .evaluate import PACKAGE_SRC
from .generic.contract import MetricSpec
from .generic.init import init_project
from .generic.results import ResultsReporter, read_rows
from .generic.workspace import GenericWorkspace, Measure, Measured, measured_from
from .loop import Options, Outcome, QuietReporter, Summary, run_loop
from .metrics import LLMJudge
from .proposers import registry
from .scores import Scores, UsageTotals

CHILD_KEY = MetricSpec(channel="fd")  # the child writes its value to the result channel


@dataclass
class LoopResult:
    best_metric: float | None
    seed_metric: float | None
    best_commit: str | None
    branch: str
    stop_reason: str
    history: list[dict[str, str]] = field(default_factory=list)  # results.tsv rows
    folder: Path = Path(".")
    usage: UsageTotals | None = None  # tokens and cost so far, LLMJudge requests included


class _Printer(QuietReporter):
    def outcome(self, outcome: Outcome, scores: Scores) -> None:
        score = "" if outcome.score is None else f" {outcome.score:.6g}"
        print(f"#{outcome.iteration} {outcome.status}{score} {outcome.note}"
              f" {outcome.message}".rstrip())

    def message(self, text: str) -> None:
        print(text)


class Loop:
    def __init__(self, target: str | Sequence[str], metric: str | Callable[[str], float],
                 directives: str | None = None, proposer: Any = None,
                 higher_is_better: bool | None = None, *, readonly: Sequence[str] = (),
                 repo: str | Path | None = None, tag: str | None = None,
                 timeout: float = 300.0, acceptance: dict[str, Any] | None = None,
                 metric_regex: str | None = None, verbose: bool = False,
                 check: str | None = None, unit: str | None = None,
                 implausible: str = "flag") -> None:
        targets = [target] if isinstance(target, str | Path) else list(target)
        start = Path(repo) if repo else Path(targets[0]).resolve().parent
        self.repo = gitops.repo_root(start)
        self.editable = [self._rel(t) for t in targets]
        self.readonly = [self._rel(t) for t in readonly]
        self.metric, self.directives, self.proposer = metric, directives, proposer
        self.higher_is_better = direction(metric, higher_is_better)
        self.timeout, self.acceptance = timeout, acceptance
        self.metric_regex, self.verbose = metric_regex, verbose
        self.check, self.implausible = check, implausible
        self.unit = unit if unit is not None else str(getattr(metric, "unit", "") or "")
        self.tag = tag or Path(self.editable[0]).stem.replace("/", "-")

    def _rel(self, path: str | Path) -> str:
        p = Path(path)
        p = p if p.is_absolute() else (Path.cwd() / p)
        if not p.exists():
            p = self.repo / path
        return str(p.resolve().relative_to(self.repo.resolve()))

    def run(self, iterations: int = 10, **options: Any) -> LoopResult:
        """Run up to `iterations` attempts; Options keywords (patience, max_cost...) apply."""
        if os.environ.get("RATCHET_METRIC_CHILD"):
            raise RatchetError("Loop.run() called while importing a metric in its sandboxed"
                               " child: guard it with `if __name__ == \"__main__\":`")
        folder = self.repo / ".ratchet" / self.tag
        command = self.metric if isinstance(self.metric, str) else (
            f"{sys.executable} -m ratchetloop.generic.child {folder / 'metric.json'} {{target}}")
        metric = (MetricSpec(kind="regex", pattern=self.metric_regex) if self.metric_regex
                  else MetricSpec() if isinstance(self.metric, str) else CHILD_KEY)
        init_project(self.repo, tag=self.tag, editable=self.editable, readonly=self.readonly,
                     run_command=command, metric=metric, higher_is_better=self.higher_is_better,
                     timeout=self.timeout, directives=self.directives, force=True,
                     acceptance=self.acceptance, check_command=self.check, unit=self.unit,
                     implausible=self.implausible)
        measure_fn = None if isinstance(self.metric, str) else callable_measure(
            self.metric, folder, self.editable[0], self.timeout, self.readonly)
        return run_contract(folder, self.proposer, iterations, verbose=self.verbose,
                            measure_fn=measure_fn, judges=judges(self.metric), **options)


def run_contract(folder: Path, proposer: Any = None, iterations: int = 10, *,
                 verbose: bool = False, measure_fn: Measure | None = None,
                 judges: Sequence[LLMJudge] = (), **options: Any) -> LoopResult:
    """Run the loop on a contract already written (.ratchet/<tag>/, by Loop or explore)."""
    folder = Path(folder)
    exp = experiment_mod.load(folder)
    workspace = GenericWorkspace(exp, measure_fn)
    workspace.prepare()
    if isinstance(proposer, list | tuple):  # several models: a bandit picks (bandit.py)
        from .proposers.bandit import BanditProposer

        proposer = BanditProposer([registry.resolve(p, exp) if isinstance(p, str) else p
                                   for p in proposer])
    proposer = (registry.resolve(proposer, exp) if proposer is None
                or isinstance(proposer, str) else proposer)
    # One budget for the run: the loop binds it to SCORES' totals and the limits.
    budget = attach_budget(proposer, options.get("max_cost"), options.get("max_tokens"))
    for judge in judges:
        judge.budget = budget
    reporter = ResultsReporter(_Printer() if verbose else QuietReporter(), folder)
    summary = run_loop(exp, proposer, Options(iterations=iterations, **options), reporter,
                       workspace)
    best = summary.best
    return LoopResult(
        best_metric=best.score if best else None,
        seed_metric=summary.seed.score if summary.seed else None,
        best_commit=None if best is None or best.commit == "seed" else best.commit,
        branch=workspace.trees.branch, stop_reason=summary.stop_reason,
        history=read_rows(folder / "results.tsv"), folder=folder, usage=summary.usage)


@dataclass
class Explored:
    """A contract a model proposed and `explore` wrote; `run` starts the loop on it."""

    folder: Path
    contract: dict[str, Any]  # experiment.json as written
    usage: UsageTotals  # the explorer's requests
    setup_check: dict[str, Any] | None  # command, ok, how it ended, output tail

    def run(self, proposer: Any = None, iterations: int = 10, *, verbose: bool = False,
            **options: Any) -> LoopResult:
        return run_contract(self.folder, proposer, iterations, verbose=verbose, **options)


def explore(model: Any, repo: str | Path = ".", *, tag: str | None = None,
            confirm: Callable[[str], bool] | None = None, force: bool = False) -> Explored:
    """`ratchet init --explore`: a model (a --model string or a proposer) reads `repo` and
    proposes the contract; it is checked like `ratchet init`'s, shown to `confirm` (the
    plain-text table; default: accepted), its setup check runs in the sandbox, and
    .ratchet/<tag>/ is written with explore.json. Bad proposals and failed setup checks
    raise RatchetError with nothing written."""
    from .generic import explore as explore_mod

    found = explore_mod.explore(Path(repo), model, tag=tag)
    values = dict(found.values, **({"tag": tag} if tag else {}))

    def ask(found: explore_mod.Exploration, values: dict[str, Any]) -> bool:
        text = "".join(f"{k}: {v}\n" for k, v in explore_mod.rows(found, values))
        return confirm is None or confirm(text)

    folder = explore_mod.write(found, values, Path(repo), confirm=ask, force=force)
    contract = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    return Explored(folder=folder, contract=contract, usage=found.usage,
                    setup_check=found.setup)


def run_experiment(experiment: str | Path, proposer: Any = None, iterations: int = 10, *,
                   verbose: bool = False, **options: Any) -> Summary:
    """`ratchet run EXPERIMENT` from Python, for an experiment folder (its name under
    experiments/, or its path): `proposer` is a --model string or a proposer, `options`
    are loop.Options keywords -- `ray="auto"` (or an address) evaluates on a Ray
    cluster's bench nodes (cluster.py)."""
    exp = experiment_mod.load(experiment)
    if exp.generic is not None:
        raise RatchetError(f"{exp.root} is a generic-mode contract: run it with Loop(...).run"
                           " or run_contract")
    if proposer is None or isinstance(proposer, str):
        proposer = registry.resolve(proposer, exp)
    return run_loop(exp, proposer, Options(iterations=iterations, **options),
                    _Printer() if verbose else QuietReporter())


def direction(metric: Any, higher_is_better: bool | None) -> bool:
    """The direction to optimise: the caller's, else the metric's declared one, else higher.
    A caller contradicting the metric's declaration is refused (see the module docstring)."""
    declared = getattr(metric, "higher_is_better", None)
    declared = declared if isinstance(declared, bool) else None
    if higher_is_better is None:
        return True if declared is None else declared
    if declared is not None and declared != higher_is_better:
        word = "higher" if declared else "lower"
        raise RatchetError(
            f"{type(metric).__name__} is {word} is better, but higher_is_better="
            f"{higher_is_better} was passed: drop the argument, or set the metric's own"
            " higher_is_better to optimise it the other way on purpose")
    return higher_is_better


def judges(metric: Any) -> list[LLMJudge]:
    """The LLMJudges in a metric (a composite's parts too): they spend the run's budget."""
    if isinstance(metric, LLMJudge):
        return [metric]
    return [j for part, _ in getattr(metric, "parts", []) for j in judges(part)]


def callable_measure(metric: Callable[[str], float], folder: Path, target: str,
                     timeout: float, readonly: Sequence[str] = ()) -> Measure:
    """A Measure that calls `metric(<run dir>/<target>)`: sandboxed child reporting on the
    result channel, or in-process for the parts that run no candidate code (see
    ratchetloop.metrics.LLMJudge). Wall and CPU seconds are those of the sandboxed parts."""
    parts = list(getattr(metric, "parts", [])) if getattr(metric, "in_process", False) else []
    units = parts or [(metric, 1.0)]
    specs = [None if getattr(m, "in_process", False) else _pickle(m, folder, i)
             for i, (m, _) in enumerate(units)]

    def run(cwd: Path) -> Measured:
        path, total, logs = str(cwd / target), 0.0, []
        wall: float | None = 0.0
        cpu: float | None = 0.0
        for (m, weight), spec in zip(units, specs, strict=True):
            if spec is None:
                try:
                    value: float | None = float(m(path))
                except BudgetExceeded:
                    raise  # not the candidate's doing: the run stops, with the reason
                except Exception as exc:
                    return Measured(None, traceback.format_exc()[-3000:], "crash",
                                    f"metric raised {type(exc).__name__}: {exc}"[:300])
            else:
                proc = sandbox.run([sys.executable, "-m", "ratchetloop.generic.child", str(spec),
                                    path], cwd=cwd, timeout=timeout,
                                   env={"PYTHONPATH": str(PACKAGE_SRC)},
                                   ro_paths=[folder, *_user_paths()], result_channel=True,
                                   artefacts=(), readonly_inside=list(readonly))
                got = measured_from(proc, CHILD_KEY, label="metric", timeout=timeout)
                logs.append(got.log)
                if got.value is None:
                    if got.kind == "no_metric":
                        got.kind = "crash"
                        got.message = (f"metric exited {proc.returncode} without writing a value"
                                       " to its result channel")
                    return got
                value = got.value
                wall = None if wall is None or got.wall_seconds is None else (
                    wall + got.wall_seconds)
                cpu = None if cpu is None or got.cpu_seconds is None else cpu + got.cpu_seconds
            total += weight * value
        sandboxed = any(spec is not None for spec in specs)
        return Measured(total, "\n".join(logs)[-4000:], wall_seconds=wall if sandboxed else None,
                        cpu_seconds=cpu if sandboxed else None, channel="fd")

    return run


def _user_paths() -> list[Path]:
    return [Path(p or os.getcwd()) for p in sys.path if Path(p or os.getcwd()).is_dir()]


def _pickle(metric: Any, folder: Path, index: int) -> Path:
    try:
        blob = pickle.dumps(metric)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise RatchetError(
            "the metric must be picklable by reference (a module-level function, or an object"
            f" of a module-level class such as ratchetloop.metrics.*), not a lambda: {exc}"
        ) from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"metric-{index}.pickle").write_bytes(blob)
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    spec = {"pickle": str(folder / f"metric-{index}.pickle"),
            "main": main if b"__main__" in blob else None,
            "path": [str(p) for p in _user_paths()]}
    path = folder / ("metric.json" if index == 0 else f"metric-{index}.json")
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path
