"""The ratchet: one iteration, top to bottom.

    build prompt -> ask proposer -> extract one function -> skip duplicates -> security
    -> sandboxed eval (build, adversarial validation, paired timing) -> decide -> record
    -> commit and archive winners

Every failure of a candidate is a `Rejected` raised by the step that found it, recorded in
runs/<n>/ and memory, and the loop goes on. Only user-fixable problems (RatchetError) and
a proposer that cannot work at all (ProposerError) stop the run, with state intact.
"""

from __future__ import annotations

import functools
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

from rich.markup import escape  # reporter messages are markup; what they quote is not

from . import evaluate, gitops, measure, sandbox, stability
from . import memory as memory_mod
from . import novelty as novelty_mod
from . import review as review_mod
from . import scores as scores_mod
from . import strategy as strategy_mod
from .budget import Budget, BudgetExceeded, attach_budget
from .errors import RatchetError
from .experiment import Experiment
from .extract import Extracted, ExtractionError, fingerprint
from .files import atomic_write_text, read_text_or_empty
from .lock import experiment_lock
from .memory import Memory, Worked
from .proposers.base import Feedback, Proposal, ProposalFailed, Proposer, Usage
from .runs import RunRecord, last_iteration
from .scores import Row, Scores
from .workspace import Evaluator, ExperimentFolder, LocalEvaluator, Workspace


@dataclass
class Options:
    iterations: int = 10
    max_cost: float | None = None  # USD
    max_tokens: int | None = None
    max_seconds: float | None = None
    patience: int | None = None  # stop after this many iterations without an accept
    until: int | None = None  # run until this iteration number in total (then `iterations`
    # is ignored): `--until N` on resume, where `--loop N` means N more
    target: float | None = None  # stop once the best score reaches this
    drift_every: int = 10  # re-measure best against seed every N iterations (0 = never)
    parallel: int = 1  # proposals in flight at once (--parallel K; see scheduler.py)
    pipeline: bool | None = None  # request the next proposal while one is evaluated;
    # None: on for remote proposers (a request that takes seconds), off otherwise
    ray: str | None = None  # evaluate on a Ray cluster's bench nodes ("auto" or an address)
    outer_every: int = 0  # every K iterations the outer loop rewrites the strategy (0: off)
    outer_model: str | None = None  # its model; None: the rule-based step (strategy.py)
    review: str | Proposer | None = None  # --review MODEL: a reviewer reads each diff first
    review_wins: bool = False  # --review-wins: and each proven winner again, before commit
    novelty: float | None = None  # --novelty T: skip code this similar to code evaluated

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> Options:
        """`ratchet run`'s flags, each named as its field here (None keeps the default);
        --max-minutes is the one in other units."""
        minutes = flags.pop("max_minutes", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flags) - known)
        if unknown:
            raise TypeError(f"flags without an Options field: {unknown}")
        given = {k: v for k, v in flags.items() if v is not None}
        return cls(**given, max_seconds=minutes * 60 if minutes else None)


Status = Literal["accepted_best", "accepted_nonbest", "rejected", "failed", "duplicate",
                 "interrupted"]


@dataclass
class Outcome:
    iteration: int
    status: Status
    note: str = ""
    failure_kind: str | None = None
    message: str = ""
    score: float | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    commit: str | None = None
    cases_won: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    seconds: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # named metrics (generic mode)
    retimed: int = 0  # timed again: a winner landed during its evaluation (scheduler.py)
    model: str = ""  # the model a failed request went to ("": none went out, or see proposal)

    @property
    def accepted(self) -> bool:
        return self.status.startswith("accepted")


@dataclass
class Summary:
    experiment: str
    proposer: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop_reason: str = ""
    interrupted: bool = False  # Ctrl-C: the CLI exits 130 after the summary
    best: Row | None = None
    seed: Row | None = None
    usage: scores_mod.UsageTotals | None = None


class Rejected(Exception):
    """A candidate stopped at some step; carries what memory needs to learn from it."""

    def __init__(self, status: Status, kind: str, message: str, detail: str = "",
                 score: float | None = None, ratio: float | None = None,
                 infrastructure: bool = False, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics or {}  # the candidate's named metrics, when it ran
        self.status, self.kind, self.message, self.detail = status, kind, message, detail
        self.score, self.ratio = score, ratio
        # the request failed (server, network), not a candidate: never shown to the model
        self.infrastructure = infrastructure


class Reporter(Protocol):
    def phase(self, iteration: int, name: str) -> None: ...
    def outcome(self, outcome: Outcome, scores: Scores) -> None: ...
    def message(self, text: str) -> None: ...


class QuietReporter:
    def phase(self, iteration: int, name: str) -> None: ...
    def outcome(self, outcome: Outcome, scores: Scores) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class Decision:
    is_best: bool
    cases_won: list[str]
    overall: measure.Comparison
    per_case: dict[str, measure.Comparison]
    score: float
    case_scores: dict[str, float]


class Guard:
    """The session's one lock. Held while state is read or written; let go, by the thread
    that holds it, while a request or an evaluation runs, so other attempts' stages go on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> Guard:
        try:
            self._lock.acquire()
        except BaseException:  # Ctrl-C during the wait: take it anyway, so the code that
            self._lock.acquire()  # unwinds (recording what is in flight) holds it
            self._owner = threading.get_ident()
            raise
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let go for the duration (a no-op in a thread that does not hold it)."""
        if self._owner != threading.get_ident():
            yield
            return
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


@dataclass
class Session:
    """Everything one run holds: the contract, the state, the proposer."""

    exp: Experiment
    repo: Path
    workspace: Workspace
    proposer: Proposer
    options: Options
    reporter: Reporter
    scores: Scores
    memory: Memory
    budget: Budget  # held by the proposer too, which checks it before every request
    unrecorded: list[str] = field(default_factory=list)  # winners since the last record
    last_failure: dict[str, str] | None = None
    since_accept: int = 0
    # Usage of this iteration's proposal request, failed or not (attempt.json); between
    # iterations, the budget's guess for a proposer that does not estimate its requests.
    last_usage: Usage | None = None
    reviewer: Proposer | None = None  # --review (review.py)
    novelty: novelty_mod.Index | None = None  # --novelty (novelty.py)
    started: float = field(default_factory=time.monotonic)
    now: Callable[[], str] = field(default=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    # --parallel: the stages of several attempts interleave (scheduler.py). Whoever reads
    # or writes the state holds `guard`; a request or an evaluation lets it go meanwhile.
    guard: Guard = field(default_factory=lambda: Guard())
    proposer_gate: AbstractContextManager[Any] = field(default_factory=nullcontext)
    in_flight: dict[str, int] = field(default_factory=dict)  # fingerprint -> attempt
    generation: int = 0  # winners committed in this run: a timing older than the last
    # winner was measured against a former incumbent (scheduler.py re-times it)
    outer: strategy_mod.Outer | None = None  # --outer-every: the strategy and its step


# --------------------------------------------------------------------------- the run


def run_loop(exp: Experiment, proposer: Proposer, options: Options,
             reporter: Reporter | None = None, workspace: Workspace | None = None) -> Summary:
    """Run up to options.iterations attempts; `workspace` defaults to the experiment folder
    (generic mode passes its own, see ratchetloop.generic.session_parts)."""
    exp.check_toolchain()
    repo = gitops.repo_root(exp.root)
    gitops.check_branch(repo)
    with experiment_lock(exp.root), ExitStack() as cleanup:
        evals = evaluator_for(exp, options, workspace)
        if evals is not None:
            cleanup.callback(evals.close)
        s = load_session(exp, repo, workspace or ExperimentFolder(exp, repo, evals), proposer,
                         options, reporter or QuietReporter())
        summary = Summary(experiment=exp.name, proposer=proposer.name)
        wait_for_probe = warn_if_host_busy(s)
        measure.preload()  # scipy (~0.6 s) loads while the seed runs or the model thinks
        try:
            with s.guard:  # this thread is the one writer; other stages take turns with it
                ensure_seeded(s)
                todo, done_text = planned_iterations(s)
                if scheduled(s):
                    from .scheduler import run_scheduled

                    summary.stop_reason = run_scheduled(s, todo, summary.outcomes,
                                                        bench_slots(s)) or done_text
                else:
                    summary.stop_reason = run_in_turn(s, todo, summary.outcomes) or done_text
        except KeyboardInterrupt:
            summary.stop_reason = "interrupted (Ctrl-C); state saved"
            summary.interrupted = True
        except RatchetError as exc:
            if getattr(exc, "stop_quietly", False):
                summary.stop_reason = str(exc)
            else:
                raise
        finally:
            record_winners(s)
            wait_for_probe()
        summary.best, summary.seed, summary.usage = s.scores.best, s.scores.seed, s.scores.usage
        return summary


def run_in_turn(s: Session, todo: int, outcomes: list[Outcome]) -> str:
    """The plain loop: one attempt after another. Returns a stop reason, or "" when all
    `todo` attempts were made."""
    for _ in range(todo):
        reason = stop_reason(s)
        if reason:
            return reason
        n = next_iteration(s)
        outcomes.append(iterate(s, n))
        after_attempt(s, n)
    return ""


def next_iteration(s: Session) -> int:
    return max(s.scores.last_iteration, last_iteration(s.exp.root)) + 1


def after_attempt(s: Session, n: int) -> None:
    """What runs between attempts, in the writer: the drift check, the outer step."""
    maybe_check_drift(s, n)
    maybe_outer_step(s, n)


def scheduled(s: Session) -> bool:
    """--parallel K > 1, or pipelining: the stages of several attempts overlap."""
    return s.options.parallel > 1 or pipelining(s.options, s.proposer)


def pipelining(options: Options, proposer: Proposer) -> bool:
    """Unless asked otherwise, on for a remote proposer (a model behind a network or a
    CLI: its request takes seconds); off for an instant one (the tuner, a replay script,
    a proposer of your own), where there is nothing to overlap."""
    if options.pipeline is not None:
        return options.pipeline
    return bool(getattr(proposer, "remote", False))


def bench_slots(s: Session) -> int:
    """Evaluations that may run at once: one per benchmark host of the workspace's
    evaluator (generic mode has none: this host)."""
    evaluator = getattr(s.workspace, "evaluator", None)
    return max(1, int(getattr(evaluator, "slots", 1)))


def evaluator_for(exp: Experiment, options: Options,
                  workspace: Workspace | None) -> Evaluator | None:
    """Where an experiment folder's evaluations run: a Ray cluster (--ray) or this host."""
    if options.ray is None:
        return None if workspace is not None else LocalEvaluator()
    if workspace is not None:
        raise RatchetError("--ray evaluates experiment folders only, not generic mode")
    from .cluster import RayEvaluator

    return RayEvaluator(options.ray)


def planned_iterations(s: Session) -> tuple[int, str]:
    """How many attempts this run makes, and its stop reason when it makes them all:
    `--loop N` is N more attempts, `--until N` runs until attempt N in total."""
    until = s.options.until
    done = max(s.scores.last_iteration, last_iteration(s.exp.root))
    if until is None:
        n = s.options.iterations
        text = f"completed {n} iteration{'s' * (n != 1)}"
        return n, text + (f", {done + n} in all" if done else "")
    if done >= until:
        return 0, f"already at iteration {done} (--until {until}): nothing to run"
    return until - done, f"completed {until - done} more, {until} in all (--until {until})"


def iterate(s: Session, n: int) -> Outcome:
    """One attempt, stage by stage; scheduler.py runs the same stages K at a time."""
    a = begin_attempt(s, n)
    try:
        propose_stage(s, a)  # build prompt, ask the proposer, extract one function
        screen_stage(s, a)  # duplicates, near-duplicates, security, review
        evaluate_stage(s, a)  # sandboxed eval.py: build, validate, paired timing
        return conclude(s, a)  # decide, commit a winner, record
    except (KeyboardInterrupt, BudgetExceeded) as stop:  # finish the record, end the run
        abandon_attempt(s, a, stop)
        raise


@dataclass
class Attempt:
    """One attempt on its way through the stages; a `Rejected` step ends it early."""

    n: int
    run: RunRecord
    clock: float
    outcome: Outcome
    proposal: Proposal | None = None
    candidate: Extracted | None = None
    result: evaluate.EvalResult | None = None
    generation: int = 0  # s.generation when its timing started (winners since then?)
    rejected: Rejected | None = None
    fingerprint: str = ""  # as screened (a generic-mode fix may change the candidate)


def begin_attempt(s: Session, n: int) -> Attempt:
    s.scores.last_iteration = max(s.scores.last_iteration, n)
    return Attempt(n=n, run=RunRecord(s.exp.root, n), clock=time.monotonic(),
                   outcome=Outcome(iteration=n, status="failed"))


def propose_stage(s: Session, a: Attempt) -> None:
    try:
        prompt = build_prompt(s, a.n, a.run)
        a.proposal = ask_proposer(s, a, prompt)
        a.outcome.usage = a.proposal.usage
        a.candidate = extract_candidate(s, a.proposal, a.run)
        a.outcome.note = a.candidate.note
    except Rejected as r:
        a.rejected = r


def screen_stage(s: Session, a: Attempt) -> None:
    if a.rejected or a.candidate is None:
        return
    try:
        skip_duplicate(s, a.candidate)
        skip_near_duplicate(s, a.candidate)
        a.fingerprint = a.candidate.fingerprint
        s.in_flight[a.fingerprint] = a.n  # until it is concluded: no twin is evaluated
        check_security(s, a.n, a.candidate, a.run)
        review_candidate(s, a.n, a.candidate, a.run)
    except Rejected as r:
        a.rejected = r


def evaluate_stage(s: Session, a: Attempt) -> None:
    if a.rejected or a.candidate is None:
        return
    a.generation = s.generation
    try:
        a.result = evaluate_candidate(s, a.n, a.candidate, a.run, a.proposal)
        a.outcome.metrics = scores_mod.named_metrics(a.result.info)
    except Rejected as r:
        a.rejected = r


def conclude(s: Session, a: Attempt) -> Outcome:
    """Decide, then record: the one writer of SCORES, MEMORY, git and winners/."""
    outcome = a.outcome
    if not a.rejected and a.candidate is not None and a.proposal and a.result is not None:
        try:
            decision = decide(s, a.result, a.run)
            review_candidate(s, a.n, a.candidate, a.run, decision)  # --review-wins
            outcome = accept_or_reject(s, a.n, a.candidate, a.proposal, decision, outcome)
        except Rejected as rejection:
            a.rejected = rejection
    if a.rejected:
        r = a.rejected
        outcome.status, outcome.failure_kind, outcome.message = r.status, r.kind, r.message
        outcome.score, outcome.ratio = r.score, r.ratio
        outcome.metrics = r.metrics or outcome.metrics
        learn_from_rejection(s, a.n, outcome, r)
    s.in_flight.pop(a.fingerprint, None)
    record_attempt(s, a.n, outcome, a.proposal, a.run, a.clock)
    tell_proposer(s, a.proposal, outcome)
    s.reporter.outcome(outcome, s.scores)
    return outcome


def abandon_attempt(s: Session, a: Attempt, stop: BaseException) -> None:
    """Ctrl-C, a refused budget, or a failure of the machinery itself (scheduler.py):
    the attempt is recorded as interrupted, with why, unless conclude recorded it already
    (a winner committed but not recorded is restored from git by the next run)."""
    if (a.run.path / "attempt.json").exists():
        return
    a.outcome.status = "interrupted"
    a.outcome.message = ("interrupted by Ctrl-C" if isinstance(stop, KeyboardInterrupt)
                         else str(stop) if isinstance(stop, BudgetExceeded)
                         else f"stopped: {type(stop).__name__}: {stop}")
    s.in_flight.pop(a.fingerprint, None)
    record_attempt(s, a.n, a.outcome, a.proposal, a.run, a.clock)


# --------------------------------------------------------------------------- steps


def load_session(exp: Experiment, repo: Path, workspace: Workspace, proposer: Proposer,
                 options: Options, reporter: Reporter) -> Session:
    """Step 1: contract and state, reconciled with git so no accepted winner is lost."""
    scores = scores_mod.load(exp.root, exp.name, exp.unit, exp.direction)
    memory = memory_mod.load(exp.root)
    memory.add_hypotheses(exp.hypotheses)
    budget = attach_budget(proposer, options.max_cost, options.max_tokens, scores.usage)
    s = Session(exp=exp, repo=repo, workspace=workspace, proposer=proposer, options=options,
                reporter=reporter, scores=scores, memory=memory, budget=budget,
                reviewer=review_mod.make_reviewer(exp, options, budget),
                novelty=novelty_mod.make_index(exp, options.novelty))
    if not getattr(proposer, "parallel_safe", False):  # its calls take turns
        s.proposer_gate = threading.Lock()
    reconcile_with_git(s)
    start_outer(s)
    return s


def reconcile_with_git(s: Session) -> None:
    """Winners committed by a run that died before recording them are restored from git."""
    known = {r.commit for r in s.scores.rows}
    restored = 0
    names = {s.exp.folder, s.exp.name}  # older commits named it by experiment.json's name
    for sha, row_data in gitops.accept_commits(s.repo, names, s.exp.root,
                                               since=s.scores.reset_at):
        if sha in known:
            continue
        specialists = row_data.pop("specialists_after", None)
        row = Row.model_validate({**row_data, "commit": sha})
        s.scores.rows.append(row)
        if row.kind == "best":
            s.scores.best_commit = sha
        if isinstance(specialists, dict):
            s.scores.specialists = specialists
        source = gitops.show_file(s.repo, sha, s.exp.candidate_path) or ""
        archive_winner(s, sha, source, row.note)
        s.scores.counts.accepted += 1
        s.memory.seen[fingerprint(source, s.exp.target.language)] = f"accepted {sha}"
        s.scores.last_iteration = max(s.scores.last_iteration, row.iteration)
        s.unrecorded.append(sha)
        restored += 1
    # a run killed between the SCORES write and the MEMORY write (record_attempt saves
    # them in that order) has the row but not the memory of it
    remembered = set(s.memory.seen.values())
    repaired = 0
    for row in s.scores.rows:
        if f"accepted {row.commit}" not in remembered:
            kept = gitops.show_file(s.repo, row.commit, s.exp.candidate_path)
            if kept:
                s.memory.seen[fingerprint(kept, s.exp.target.language)] = \
                    f"accepted {row.commit}"
                repaired += 1
    if restored:
        s.reporter.message(f"restored {restored} accepted winner(s) from git history")
    if restored or repaired:
        save_state(s)


def ensure_seeded(s: Session) -> None:
    """Measure the seed once: it is the baseline every winner is compared with."""
    if s.scores.seed is not None:
        return
    s.reporter.phase(0, "measuring seed baseline")
    naive = s.exp.naive_path.read_text(encoding="utf-8")
    result = s.workspace.baseline(naive, {}, seed=0)
    if not result.ok or not result.samples:
        f = result.failure
        raise RatchetError(
            f"the seed {s.exp.naive} failed its own evaluation"
            f" ({f.kind}: {f.message})" if f else "the seed produced no samples"
        )
    cases = {c: v["candidate"] for c, v in result.samples.items()}
    s.scores.seed = Row(
        timestamp=s.now(), model="seed", kind="seed", commit="seed",
        score=statistics.median(measure.suite_totals(cases)),
        case_scores={c: statistics.median(v) for c, v in cases.items()},
        note="naive seed", metrics=scores_mod.named_metrics(result.info),
    )
    s.memory.seen[fingerprint(naive, s.exp.target.language)] = "seed"
    save_state(s)


def warn_if_host_busy(s: Session) -> Callable[[], None]:
    """Timing on a busy host needs more rounds and decides less, and a sandbox layer that
    is off here leaves a gap: say both up front, every run. CPU hogs are sampled in the
    background (stability.watch_for_hogs); the sandbox probes stay here, as they set up
    the cgroups the first evaluation reuses. Returns a wait for the background sample."""
    for warning in stability.check_host(sample_seconds=0).warnings:
        s.reporter.message(f"[yellow]{escape(host_line(warning))}[/]")
    for name, why in sandbox.missing_layers():
        s.reporter.message(f"[yellow]sandbox: {escape(name)} is off: {escape(why)}[/]")
    return stability.watch_for_hogs(
        lambda text: s.reporter.message(f"[yellow]{escape(host_line(text))}[/]"))


def host_line(warning: str) -> str:
    """"host: ..." once, also for a warning that already starts with "host busy"."""
    return warning if warning.startswith("host") else f"host: {warning}"


def stop_reason(s: Session) -> str:
    o, sc = s.options, s.scores
    if o.max_seconds is not None and time.monotonic() - s.started >= o.max_seconds:
        return f"wall-clock limit of {o.max_seconds:.0f}s reached"
    if o.patience is not None and s.since_accept >= o.patience:
        return f"no improvement in {o.patience} iterations"
    best = sc.best
    if o.target is not None and best is not None:
        reached = best.score <= o.target if s.exp.lower_is_better else best.score >= o.target
        if reached:
            return f"target {o.target} {s.exp.unit} reached"
    # The hard check is the proposer's, before each request it sends (budget.py); here the
    # run stops cleanly once a request was refused, or when one like the latest won't fit.
    return s.budget.stop_reason(s.last_usage)


def build_prompt(s: Session, n: int, run: RunRecord) -> str:
    """Step 2: the experiment's prompt.py decides what the model sees."""
    s.reporter.phase(n, "building prompt")
    best = s.scores.best
    context: dict[str, Any] = {
        "experiment": s.exp,
        "experiment_md": read_text_or_empty(s.exp.path("EXPERIMENT.md")),
        "target_function": s.exp.target.function,
        "language": s.exp.target.language,
        "naive_source": s.exp.naive_path.read_text(encoding="utf-8"),
        "incumbent_source": incumbent_source(s, s.scores.best_commit),
        "incumbent_score": best.score if best else None,
        "seed_score": s.scores.seed.score if s.scores.seed else None,
        "unit": s.exp.unit,
        "specialists": [
            {"case": case, "score": row.case_scores.get(case), "source": incumbent_source(s, c)}
            for case, c in sorted(s.scores.specialists.items())
            if (row := s.scores.row(c)) is not None
        ],
        "memory_md": s.memory.render(),
        "strategy_md": strategy_mod.prompt_section(s.outer.current) if s.outer else "",
        "last_failure": s.last_failure,
        "iteration": n,
        "cases": [{"name": c.name, "params": c.params} for c in s.exp.enabled_cases],
    }
    prompt = s.exp.build_prompt(context)
    run.text("prompt.md", prompt)
    return prompt


def ask_proposer(s: Session, a: Attempt, prompt: str) -> Proposal:
    """Step 3: text plus token usage; a failed request is a recorded attempt, its usage
    counted. A request the budget refused was not sent: BudgetExceeded stops the run."""
    run = a.run
    s.reporter.phase(a.n, f"asking {s.proposer.name}")
    try:
        with run.timed("propose"), s.guard.released(), s.proposer_gate:
            try:
                proposal = s.proposer.propose(prompt)
            finally:
                s.budget.settle()  # this request's reservation: its usage is counted below
    except BudgetExceeded as exc:
        run.json("budget.json", {"refused": str(exc), "estimate": asdict(exc.estimate)})
        raise
    except ProposalFailed as exc:
        s.last_usage = a.outcome.usage = exc.usage  # a failed request may have been billed
        a.outcome.model = getattr(exc, "model", None) or s.proposer.name  # bandit: its arm
        s.scores.usage.add(exc.usage)
        run.json("request.json", exc.request or {})
        run.text("response.txt", exc.raw_response or "")
        run.json("usage.json", {**asdict(exc.usage), "seconds": run.seconds["propose"]})
        raise Rejected("failed", exc.kind, str(exc), infrastructure=True) from None
    s.last_usage = proposal.usage
    s.scores.usage.add(proposal.usage)
    run.json("request.json", proposal.request or {"model": proposal.model})
    if proposal.raw_response is not None:
        run.text("response.txt", proposal.raw_response)
    run.text("reply.md", proposal.text)
    run.json("usage.json", {**asdict(proposal.usage), "seconds": run.seconds["propose"]})
    return proposal


def extract_candidate(s: Session, proposal: Proposal, run: RunRecord) -> Extracted:
    """Step 4: exactly one function named as the target, and its one-line note."""
    try:
        candidate = s.workspace.extract(proposal.text)
    except ExtractionError as exc:
        raise Rejected("failed", exc.kind, exc.message) from None
    run.text(f"candidate{Path(s.exp.target.file).suffix}", candidate.source)
    run.text("note.txt", candidate.note + "\n")
    s.memory.add_ideas(candidate.ideas)
    return candidate


def skip_duplicate(s: Session, candidate: Extracted) -> None:
    """Step 5: code already evaluated (or already known to fail), or in flight under
    --parallel, is not evaluated again."""
    seen = s.memory.seen.get(candidate.fingerprint)
    if seen is None and candidate.fingerprint in s.in_flight:
        seen = f"in flight as attempt {s.in_flight[candidate.fingerprint]}"
    if seen is not None:
        s.memory.duplicates += 1
        raise Rejected("duplicate", "duplicate", f"same code as an earlier attempt ({seen})")


def skip_near_duplicate(s: Session, candidate: Extracted) -> None:
    """Step 5b (--novelty): code nearly identical to code already evaluated is skipped."""
    if s.novelty is None:
        return
    s.novelty.refresh(row.commit for row in s.scores.rows)
    match = s.novelty.nearest(candidate.source)
    if match is not None:
        s.memory.duplicates += 1
        s.scores.counts.near_duplicates += 1
        raise Rejected("duplicate", "novelty",
                       novelty_mod.check_message(match, s.novelty.threshold))


def check_security(s: Session, n: int, candidate: Extracted, run: RunRecord) -> None:
    """Step 6: the experiment's security.py; a rejected candidate never compiles or runs."""
    s.reporter.phase(n, "security check")
    reasons = list(s.exp.security_check()(candidate.source))
    run.json("security.json", {"ok": not reasons, "reasons": reasons})
    if reasons:
        raise Rejected("failed", "security", "; ".join(reasons))


def review_candidate(s: Session, n: int, candidate: Extracted, run: RunRecord,
                     decision: Decision | None = None) -> None:
    """Step 6b (--review): the reviewer reads the diff; its veto skips the evaluation. Given
    a decision (--review-wins), a proven winner is reviewed again before its commit."""
    if s.reviewer is None or (decision is not None and not s.options.review_wins):
        return
    stage, prompt = review_mod.prompt_for(s.exp, s.memory, incumbent_source(
        s, s.scores.best_commit), candidate.source, decision)
    s.reporter.phase(n, f"review by {s.reviewer.name}")
    try:
        with run.timed("review"), s.guard.released():
            done = review_mod.ask(s.reviewer, prompt, stage)
    except BudgetExceeded as exc:  # not sent; the budget's refusal stops the run next
        run.json("budget.json", {"refused": str(exc), "estimate": asdict(exc.estimate)})
        raise Rejected("failed", "budget", f"not reviewed: {exc}", infrastructure=True) from None
    finally:
        s.budget.settle()
    s.scores.usage.add(done.usage)
    s.scores.review.add(done.verdict.category if not done.verdict.ok else None,
                        bool(done.verdict.warning), done.usage)
    run.json("review.json" if decision is None else "review_win.json", done.record())
    if done.verdict.warning:
        s.reporter.message(f"[yellow]review: {escape(done.verdict.warning)}[/]")
    if not done.verdict.ok:
        raise Rejected("failed", "review", done.message())


def evaluate_candidate(s: Session, n: int, candidate: Extracted, run: RunRecord,
                       proposal: Proposal | None = None) -> evaluate.EvalResult:
    """Step 7: eval.py in the sandbox: build, adversarial validation, paired timing."""
    s.reporter.phase(n, "evaluating (build, validate, time)")
    references = reference_sources(s)
    timing = getattr(s.reporter, "timing", None)  # optional: a live view's progress
    if callable(timing):
        run.progress = functools.partial(timing, n)
    with run.timed("evaluate"), s.guard.released():
        result = s.workspace.evaluate(n, candidate, references, run, (
            functools.partial(follow_up, s, about=proposal)
            if s.proposer.answers_follow_ups else None))
    run.json("result.json", result)
    for name, log in result.logs.items():
        run.text(f"{name}.log", log)
    if not result.ok:
        f = result.failure or evaluate.Failure(kind="harness_error", message="no failure given")
        raise Rejected("failed", f.kind, f.message, f.detail,
                       metrics=scores_mod.named_metrics(result.info))
    return result


def decide(s: Session, result: evaluate.EvalResult, run: RunRecord) -> Decision:
    """Step 8: best winner, case specialist (accepted nonbest), or rejected.

    measure.decide is the one statistical rule (the benchmarks run it too): overall on the
    primary case or the per-round suite totals against the best, each case against its
    current holder; the workspace adds its own rules on top."""
    acc = s.exp.acceptance
    cand = {c: v["candidate"] for c, v in result.samples.items()}
    stats = measure.decide(
        result.samples, "best", acc, s.exp.lower_is_better, primary=s.exp.primary_case,
        case_references={c: ref_name(s, s.scores.holder(c)) for c in result.samples})
    judged = s.workspace.judge(stats)
    overall, per_case = stats.overall, stats.cases
    decision = Decision(is_best=judged.is_best, cases_won=judged.cases_won, overall=overall,
                        per_case=per_case, score=statistics.median(measure.suite_totals(cand)),
                        case_scores={c: statistics.median(v) for c, v in cand.items()})
    run.json("decision.json", {
        "is_best": decision.is_best, "cases_won": decision.cases_won,
        "overall": overall.to_dict(),
        "per_case": {c: cmp.to_dict() for c, cmp in per_case.items()},
        "host_warnings": stability.check_host(sample_seconds=0).warnings,
        "pinned_cpu": result.info.get("pinned_cpu"),
        "rule": getattr(s.workspace, "rule", None) or (  # generic known-noise mode: its own
                "accept when a test on the paired per-round log-ratios is significant at"
                f" {acc.confidence:.0%} (alpha spent across sequential looks: a t-test at the"
                " 3-round look, which also needs a 1.5x gain, then signed-rank tests) and the"
                f" estimated gain is at least {acc.min_effect:.1%}"),
    })
    if not decision.is_best and not decision.cases_won:
        raise Rejected("rejected", "not_better",
                       f"not proven better: x{overall.speedup:.3f} ({overall.verdict})",
                       score=decision.score, ratio=overall.ratio)
    return decision


def accept_or_reject(s: Session, n: int, candidate: Extracted, proposal: Proposal,
                     decision: Decision, outcome: Outcome) -> Outcome:
    """Steps 9-10 for a winner: commit, archive by commit hash, update scores and memory."""
    s.reporter.phase(n, "committing winner")
    exp, sc = s.exp, s.scores
    kind = "best" if decision.is_best else "nonbest"
    ratio = decision.overall.ratio if decision.is_best else (
        decision.per_case[decision.cases_won[0]].ratio)
    ci_cmp = decision.overall if decision.is_best else decision.per_case[decision.cases_won[0]]
    specialists = new_specialists(s, decision)
    row = Row(timestamp=s.now(), model=proposal.model or s.proposer.name, kind=kind,
              score=decision.score, case_scores=decision.case_scores, commit="pending",
              note=candidate.note, iteration=n, ratio=ratio,
              ci=(ci_cmp.ci_low, ci_cmp.ci_high), metrics=outcome.metrics,
              cases_won=[c for c in decision.cases_won if specialists.get(c) == "pending"])
    sha = commit_winner(s, candidate, row, specialists)
    row.commit = sha
    sc.rows.append(row)
    if decision.is_best:
        sc.best_commit = sha
    sc.specialists = {c: (sha if v == "pending" else v) for c, v in specialists.items()}
    archive_winner(s, sha, candidate.source, candidate.note)
    s.memory.record_worked(Worked(iteration=n, model=row.model, note=candidate.note, kind=kind,
                                  speedup=1 / ratio if exp.lower_is_better else ratio,
                                  score=row.score, cases=row.cases_won, commit=sha))
    s.memory.seen[candidate.fingerprint] = f"accepted {sha}"
    s.memory.mark_tried(candidate.note)
    s.since_accept = 0
    s.last_failure = None
    s.generation += 1
    sc.counts.accepted += 1
    s.unrecorded.append(sha)  # state is saved by record_attempt, committed at the end
    outcome.status = "accepted_best" if decision.is_best else "accepted_nonbest"
    outcome.score, outcome.ratio, outcome.commit = decision.score, ratio, sha
    outcome.ci, outcome.cases_won = row.ci, row.cases_won
    return outcome


def new_specialists(s: Session, d: Decision) -> dict[str, str]:
    """Per-case holders after this acceptance ("pending" marks the candidate itself)."""
    sc = s.scores
    result = dict(sc.specialists)
    for case, cmp in d.per_case.items():
        holder = sc.holder(case)
        if case in d.cases_won:
            result[case] = "pending"
        elif d.is_best and holder == sc.best_commit and cmp.verdict == "worse" and holder:
            result[case] = holder  # the old best stays the better choice for this case
    if d.is_best:
        result = {c: v for c, v in result.items() if v != "pending"}
    return result


def commit_winner(s: Session, candidate: Extracted, row: Row,
                  specialists: dict[str, str]) -> str:
    exp = s.exp
    label = "winner" if row.kind == "best" else "nonbest winner"
    trailer = row.model_dump(mode="json", exclude={"commit"})
    trailer["specialists_after"] = specialists
    message = (
        f"Accept {exp.folder} {label} from {row.model} at {row.score:.2f}{exp.unit}\n\n"
        f"{candidate.note}\n\n"
        f"Ratchet-Experiment: {exp.folder}\n"
        f"Ratchet-Row: {json.dumps(trailer, separators=(',', ':'))}\n"
    )
    return s.workspace.commit(candidate, message)


def archive_winner(s: Session, sha: str, source: str, note: str) -> None:
    folder = s.exp.path("winners", sha)
    # a copy of what git holds (show_file restores it), so no fsync: see files.py
    atomic_write_text(folder / Path(s.exp.target.file).name, source, durable=False)
    atomic_write_text(folder / "note.txt", note + "\n", durable=False)


def learn_from_rejection(s: Session, n: int, outcome: Outcome, r: Rejected) -> None:
    """Counts and memory; the prompt's "your last attempt failed" line is about the last
    attempt only, so any other outcome clears it."""
    s.last_failure = None
    if r.infrastructure:  # recorded in runs/<n>/ and counted, but not the model's doing
        s.scores.counts.failed += 1
        return
    if r.status == "duplicate":
        s.scores.counts.duplicates += 1
    elif r.status == "rejected":
        s.scores.counts.rejected += 1
        speedup = (1 / r.ratio if s.exp.lower_is_better else r.ratio) if r.ratio else None
        s.memory.record_tried(n, outcome.note or "no note", speedup)
        s.memory.mark_tried(outcome.note)
    else:
        s.scores.counts.failed += 1
        s.memory.record_failure(n, r.kind, r.message, r.detail, outcome.note)
        s.last_failure = {"kind": r.kind, "message": r.message, "detail": r.detail[-2000:]}
    s.since_accept += 1


def record_attempt(s: Session, n: int, outcome: Outcome, proposal: Proposal | None,
                   run: RunRecord, clock: float) -> None:
    """Step 9: runs/<n>/attempt.json, then SCORES and MEMORY (each write atomic)."""
    source = read_text_or_empty(run.path / f"candidate{Path(s.exp.target.file).suffix}")
    if source and outcome.status not in ("duplicate", "interrupted"):
        label = outcome.failure_kind if outcome.status == "failed" else outcome.status
        s.memory.seen.setdefault(fingerprint(source, s.exp.target.language), label or "")
    s.scores.counts.attempts += 1
    model = (proposal.model if proposal else outcome.model) or s.proposer.name
    if proposal is not None or outcome.model:  # a request went out: SCORES "Models"
        s.scores.count_model(model, outcome.status, outcome.usage)
    outcome.seconds = {**run.seconds, "total": time.monotonic() - clock}
    data = asdict(outcome)
    data["model"] = model
    data["timestamp"] = s.now()
    data["meta"] = proposal.meta if proposal else {}
    run.json("attempt.json", data)
    save_state(s)


def follow_up(s: Session, prompt: str, about: Proposal | None = None) -> Proposal:
    """A request the workspace makes mid-evaluation (a fix); its usage counts like any.
    It is made while the evaluation has let go of the guard, so it takes it to count.
    A proposer of several models (bandit.py) sends it to the one that wrote `about`."""
    ask = getattr(s.proposer, "follow_up", None)
    try:
        with s.proposer_gate:
            try:
                proposal = ask(prompt, about) if callable(ask) else s.proposer.propose(prompt)
            finally:
                s.budget.settle()
    except ProposalFailed as exc:
        with s.guard:
            s.scores.usage.add(exc.usage)
            s.scores.count_model(getattr(exc, "model", None) or s.proposer.name, "",
                                 exc.usage, fix=True)
        raise
    with s.guard:
        s.scores.usage.add(proposal.usage)
        s.scores.count_model(proposal.model or s.proposer.name, "", proposal.usage, fix=True)
    return proposal


def record_winners(s: Session) -> None:
    """Once per run: SCORES, MEMORY and winners/ into git, where the workspace keeps them.
    Each winner's own commit already carries its row, so a run that dies first loses
    nothing: the next run restores the rows from those commits and records them."""
    if not s.unrecorded:
        return
    names = ", ".join(f"winner {sha}" for sha in s.unrecorded)
    paths = state_paths(s) + [s.exp.path("winners", sha) for sha in s.unrecorded]
    try:
        s.workspace.record(paths, f"Record {s.exp.folder} {names} in scores, memory and winners/")
    except RatchetError as exc:  # the files are saved; the next run's record takes them
        s.reporter.message(f"[yellow]state not committed: {escape(str(exc))}[/]")
        return
    s.unrecorded.clear()


def tell_proposer(s: Session, proposal: Proposal | None, outcome: Outcome) -> None:
    if proposal is None:
        return
    with s.proposer_gate:
        s.proposer.observe(proposal, Feedback(status=outcome.status, score=outcome.score,
                                              lower_is_better=s.exp.lower_is_better,
                                              failure_kind=outcome.failure_kind,
                                              meta={"ratio": outcome.ratio}))


def maybe_check_drift(s: Session, n: int) -> None:
    """Re-measure the best against the seed now and then, so slow drift shows on SCORES.md."""
    every = s.options.drift_every
    if not every or n % every or not s.scores.best_commit:
        return
    s.reporter.phase(n, "re-measuring best against seed")
    naive = s.exp.naive_path.read_text(encoding="utf-8")
    result = s.workspace.baseline(incumbent_source(s, s.scores.best_commit), {"seed": naive},
                                  validate=False, seed=n)
    if not result.ok:  # the best passed before; say so rather than record a wrong ratio
        f = result.failure
        s.reporter.message(f"[yellow]drift check failed: {escape(f.kind)}: {escape(f.message)}[/]"
                           if f else
                           "[yellow]drift check failed[/]")
        return
    cand = {c: v["candidate"] for c, v in result.samples.items()}
    ref = {c: v["seed"] for c, v in result.samples.items()}
    cmp = measure.compare(measure.suite_totals(cand), measure.suite_totals(ref),
                          s.exp.acceptance, s.exp.lower_is_better)
    s.scores.drift.append(scores_mod.Drift(iteration=n, timestamp=s.now(), ratio=cmp.ratio,
                                           ci=(cmp.ci_low, cmp.ci_high)))
    s.scores.drift = s.scores.drift[-20:]
    save_state(s)


def start_outer(s: Session) -> None:
    """--outer-every K (--outer-model alone: K=10): the strategy in force goes to the
    proposer; a first version is written and committed."""
    o = s.options
    every = o.outer_every or (strategy_mod.DEFAULT_EVERY if o.outer_model else 0)
    if not every:
        return
    model = None
    if o.outer_model:
        from .proposers import registry

        model = registry.resolve(o.outer_model, s.exp)
        model.budget = s.budget  # type: ignore[attr-defined]  # one budget for the run
    s.outer = strategy_mod.Outer(s.exp, s.proposer, every, model, s.now)
    if s.outer.start(next_iteration(s), s.scores):
        commit_strategy(s, f"Strategy v1 for {s.exp.folder}: the initial one"
                           f" (--outer-every {every})")


def maybe_outer_step(s: Session, n: int) -> None:
    """Count the attempt under the strategy in force; every K-th, the outer step."""
    if s.outer is None:
        return
    s.outer.tally(s.scores)
    if s.outer.due(n):
        s.reporter.phase(n, "outer step: rewriting the search strategy")
        try:
            step, usage, exchange = s.outer.step(n)
        finally:
            s.budget.settle()  # its request is over; its usage is counted below
        s.scores.usage.add(usage)
        if exchange is not None:  # the model's request and reply, with the attempt's record
            RunRecord(s.exp.root, n).json("outer_step.json", {
                "step": step.model_dump(mode="json"), "prompt": exchange.prompt,
                "reply": exchange.reply[:strategy_mod.REPLY_LIMIT], **asdict(usage)})
        why = f": {step.error}" if step.error else ""
        s.reporter.message(escape(f"outer step: strategy v{step.version} ({step.result}{why})"))
        commit_strategy(s, f"Strategy v{step.version} for {s.exp.folder} after iteration {n}:"
                           f" {step.result}\n\n{s.outer.current.why}\n")
    scores_mod.save(s.exp.root, s.scores)  # the tally and the step's usage


def commit_strategy(s: Session, message: str) -> None:
    """STRATEGY.md/json into git where the workspace keeps state (generic mode: nowhere)."""
    try:
        s.workspace.record(strategy_mod.paths(s.exp.root), message)
    except RatchetError as exc:  # saved on disk; the next record commit takes it along
        s.reporter.message(f"[yellow]strategy not committed: {escape(str(exc))}[/]")


# --------------------------------------------------------------------------- helpers


def ref_name(s: Session, commit: str | None) -> str:
    return "best" if commit in (None, s.scores.best_commit) else f"holder_{commit}"


def reference_sources(s: Session) -> dict[str, str]:
    """The incumbent best plus each distinct per-case specialist, timed alongside."""
    refs = {"best": incumbent_source(s, s.scores.best_commit)}
    for commit in sorted(set(s.scores.specialists.values())):
        if commit != s.scores.best_commit:
            refs[ref_name(s, commit)] = incumbent_source(s, commit)
    return refs


def incumbent_source(s: Session, commit: str | None) -> str:
    if commit in (None, "seed"):
        return s.exp.naive_path.read_text(encoding="utf-8")
    archived = s.exp.path("winners", commit, Path(s.exp.target.file).name)
    if archived.is_file():
        return archived.read_text(encoding="utf-8")
    from_git = gitops.show_file(s.repo, commit, s.exp.candidate_path)
    if from_git is None:
        raise RatchetError(f"winner {commit} is neither in winners/ nor in git history")
    return from_git


def state_paths(s: Session) -> list[Path]:
    return [s.exp.path(n) for n in ("SCORES.json", "SCORES.md", "MEMORY.json", "MEMORY.md",
                                    "STRATEGY.json", "STRATEGY.md")]  # (absent ones skipped)


def save_state(s: Session) -> None:
    scores_mod.save(s.exp.root, s.scores)
    memory_mod.save(s.exp.root, s.memory)

