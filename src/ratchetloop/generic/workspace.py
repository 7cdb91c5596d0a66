"""Generic mode's Workspace: what the core loop calls where generic mode differs.

Nothing here is a second loop. The core's iterate() still builds the prompt, asks the
proposer, dedups, checks security, decides, records memory and scores; this workspace only
(1) turns a reply into a bundle of editable files, (2) runs the user's command -- candidate
and incumbent interleaved, round after round, each run in the sandbox on a fresh copy of
exactly the tree being judged (worktree.py) -- and returns the same samples[case][impl] an
eval.py would (or, in known-noise mode for expensive runs, runs the candidate alone against
the incumbent's earlier runs: knownnoise.py, trials.py), (3) compares (zero-variance
metrics are decided on the effect size),
(4) applies the size rule, (5) gates every would-be winner on the outside measurement and
on the contract's check command, and (6) commits winners on the ratchet/<tag> branch.

The verdict wall, as far as generic mode can build it
-----------------------------------------------------
* Each run: a clean copy (no state survives a run), read-only files read-only inside the
  sandbox and hash-checked afterwards, nothing copied back. A run that changed a read-only
  file, or crashed on a blocked write to one, fails with kind `integrity`.
* The metric: from the result channel when the project uses it (contract.py explains
  "auto"/"fd"/"output"); a second value or garbage there is `integrity`; a candidate run
  that reports on a different channel from the trusted runs is `integrity`.
* Outside measurement: every run's wall and CPU seconds (the sandbox measures the whole
  process tree from outside) are kept beside the metric in result.json (info.outside).
  Plausibility rule: when the metric is a time (unit s/ms/us/ns, or `metric_is_time`) and a
  candidate would be accepted as better on it while the paired test (measure.compare on
  the same interleaved runs) finds its command's CPU time measurably worse -- significant
  and at least min_effect -- the claim contradicts what was measured from outside. The
  winner is flagged (decision.json reasons, the SCORES/results.tsv note) or, with
  `"implausible": "reject"`, rejected with kind `implausible`. While the CPU question is
  still open for a would-be winner (too few rounds to be significant, estimate worse by
  min_effect), up to PLAUSIBILITY_ROUNDS rounds are taken. Limits: a forger that keeps the
  CPU time unchanged (or a metric that is not a time) passes; total CPU includes untimed
  setup, so an honest candidate that moves work out of the timed region is flagged too
  (which is usually what you want to know).
* `check_command`: runs in the sandbox on its own clean copy of every would-be winner;
  anything but exit 0 is a failure of kind `check` with the log tail for the model.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .. import benchlock, gitops, measure, sandbox, trials
from ..errors import RatchetError
from ..evaluate import EvalResult, Failure
from ..experiment import Acceptance, Experiment
from ..extract import Extracted, ExtractionError
from ..lock import experiment_lock
from ..measure import Comparison, Decision
from ..proposers.base import ProposalFailed
from ..runs import RunRecord
from ..status import TimingProgress
from ..workspace import FollowUp, Judgement
from . import constraints as constraints_mod
from . import trialtime
from .contract import (
    GenericSpec,
    MetricSpec,
    is_time_metric,
    metric_from_output,
    read_channel,
    spec_of,
)
from .edits import apply_reply, code_lines, files_of, from_bundle, to_bundle
from .worktree import Worktrees

CASE = "metric"
FIXABLE = {"crash", "no_metric", "timeout"}
PLAUSIBILITY_ROUNDS = 10  # rounds a would-be winner with a rising CPU time may be given
BLOCKED = ("Read-only file system", "Permission denied", "Operation not permitted",
           "Device or resource busy")
FD = "$RATCHET_RESULT_FD"


@dataclass
class Measured:
    """One run of the metric in one directory, with what the sandbox saw from outside."""

    value: float | None
    log: str
    kind: str = ""  # crash, no_metric, timeout, integrity when value is None
    message: str = ""
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    channel: str = ""  # where the value came from: "fd" or "output"
    peak_rss_mb: float | None = None
    named: dict[str, float | None] = field(default_factory=dict)  # contract.metrics, read

    def metrics(self) -> dict[str, float | None]:
        """Every named value of this run: the primary, the built-ins, the declared."""
        return {"metric": self.value, "wall_seconds": self.wall_seconds,
                "cpu_seconds": self.cpu_seconds, "peak_rss_mb": self.peak_rss_mb,
                **self.named}


Measure = Callable[[Path], Measured]


def measured_from(proc: sandbox.SandboxResult, metric: MetricSpec, *, label: str = "run command",
                  timeout: float = 0.0, named: Mapping[str, MetricSpec] | None = None
                  ) -> Measured:
    """A sandboxed run's metric: the result channel first, the output only as the contract
    allows (see contract.py); strict about what is on the channel. `named`: the contract's
    secondary metrics, read from the output (constraints.py)."""
    log = (proc.stdout + ("\n" + proc.stderr if proc.stderr else ""))[-8000:]
    values = {name: metric_from_output(proc.stdout, proc.stderr, spec)
              for name, spec in (named or {}).items()}

    def seen(value: float | None, kind: str = "", message: str = "",
             channel: str = "") -> Measured:
        return Measured(value, log, kind, message, wall_seconds=proc.wall_seconds,
                        cpu_seconds=proc.cpu_seconds, channel=channel,
                        peak_rss_mb=proc.peak_rss_mb, named=values)

    if proc.timed_out:
        return seen(None, "timeout", f"{label} exceeded {timeout:.0f}s")
    if proc.error:
        return seen(None, "crash", f"sandbox failed: {proc.error}")
    if proc.returncode != 0:
        return seen(None, "crash", f"{label} exited {proc.returncode}")
    if metric.channel != "output":
        value, why = read_channel(proc.result)
        if why:
            return seen(None, "integrity", why)
        if value is not None:
            return seen(value, channel="fd")
        if metric.channel == "fd":
            return seen(None, "no_metric",
                        f"nothing written to {FD} (the contract's metric.channel is fd)")
    value = metric_from_output(proc.stdout, proc.stderr, metric)
    if value is None:
        return seen(None, "no_metric", f"no metric ({metric.kind}) in output")
    return seen(value, channel="output")


def command_measure(spec: GenericSpec, timeout: float, target: str) -> Measure:
    """The run command through the sandbox; `{target}` is the first editable file. One warm
    sandbox serves every run (sandbox.Warm: same layers as sandbox.run, ~10 ms instead of
    ~60 ms a run); it falls back to a cold run where the warm path cannot work."""
    command = spec.run_command.replace("{target}", target)
    box = sandbox.Warm()
    argv, env = trialtime.argv(command, spec), trialtime.env(spec)  # the trial budget, if any
    timeout = trialtime.hard_timeout(spec, timeout)

    def run(cwd: Path) -> Measured:
        proc = box.run(argv, cwd=cwd, timeout=timeout,
                       result_channel=spec.metric.channel != "output", artefacts=(),
                       readonly_inside=list(spec.readonly), env=env,
                       ro_paths=spec.command_env().ro_paths)
        if trialtime.at_budget(proc, spec):  # stopped at the budget: its metric decides
            m = measured_from(trialtime.as_finished(proc), spec.metric, named=spec.metrics)
            if m.kind == "no_metric":
                m = replace(m, kind="timeout", message=f"stopped at the trial budget"
                            f" ({spec.trial_seconds:g}s) before it reported the metric")
            return m
        return measured_from(proc, spec.metric, timeout=timeout, named=spec.metrics)

    return run


def blocked_write(log: str, readonly: list[str]) -> str | None:
    """The read-only file a crashed run was refused writing to, if its log says so."""
    for line in log.splitlines():
        if any(text in line for text in BLOCKED):
            for rel in readonly:
                if rel in line or f"'{PurePosixPath(rel).name}'" in line:
                    return rel
    return None


class GenericWorkspace:
    """The Workspace (see ratchetloop.workspace) for any file in any git repository."""

    def __init__(self, exp: Experiment, measure_fn: Measure | None = None) -> None:
        self.exp, self.spec = exp, spec_of(exp)
        self.repo = gitops.repo_root(exp.root)
        self.trees = Worktrees(self.repo, self.spec.tag, exp.root)
        self.measure = measure_fn or command_measure(self.spec, exp.timeout_seconds,
                                                     self.spec.editable[0])
        self.sizes: tuple[int, int] = (0, 0)  # incumbent, candidate non-blank lines
        self.metric_seconds = 0.0  # time spent inside the metric (for the overhead bench)
        self.channel: str | None = None  # "fd"/"output" as the trusted runs report ("auto")
        self.flag: str | None = None  # this evaluation's implausibility finding
        self.progress: Callable[[TimingProgress], None] | None = None  # the live view's
        self.runs: dict[str, list[dict[str, float | None]]] = {}  # impl -> named metrics/run
        # Acceptance mode (paired rounds or known noise, trials.py) and what it rests on.
        self.trial_state = trials.TrialState.load(exp.root)
        self.mode, self.why, self.chosen = "paired", "", False
        self.known: trials.Trial | None = None  # this evaluation's known-noise trial
        self.notify: Callable[[str], None] = lambda text: None  # one line to the user

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Branch + pristine export; seed bundle from the branch base; the setup check and
        the check command on the incumbent, once."""
        self._check_clean()
        self.spec.command_env()  # refuses a secret in the passed-through variables up front
        with experiment_lock(self.exp.root, "prepare"):  # a running loop uses these copies
            created = self.trees.prepare(self.spec.editable, self.spec.readonly)
        seed = self.exp.naive_path
        if created or not seed.is_file():
            seed.write_text(to_bundle(self.trees.base_files(self.spec.editable)), "utf-8")
        incumbent = self.trees.tip_files(self.spec.editable)
        if self.spec.setup_check:
            ok, log = self._sandboxed(self.spec.setup_check, "setup", incumbent)
            if not ok:
                raise RatchetError(f"setup check `{self.spec.setup_check}` failed"
                                   f" ({ok_text(log)}):\n{log.text[-3000:]}")
        if self.spec.check_command:
            ok, log = self._sandboxed(self.spec.check_command, "check", incumbent)
            if not ok:
                raise RatchetError(f"check `{self.spec.check_command}` fails on the current"
                                   f" best of {self.trees.branch} ({ok_text(log)}); every winner"
                                   f" must pass it, so fix that first:\n{log.text[-3000:]}")
        if self.exp.acceptance.mode != "auto" or self.trial_state.noise() is not None:
            self.choose_mode()

    def choose_mode(self) -> None:
        """Paired rounds or known noise (trials.choose), once a run has measurements to go
        on; said once in the output and kept in trials.json and every result.json."""
        if self.chosen:
            return
        if self.exp.acceptance.mode == "auto" and self.trial_state.noise() is None:
            return
        self.mode, self.why = trials.choose(self.exp.acceptance, self.trial_state)
        self.chosen = True
        self.trial_state.mode, self.trial_state.why = self.mode, self.why
        self.trial_state.save(self.exp.root)
        self.notify(f"acceptance: {self.mode.replace('_', '-')} mode ({self.why})")

    def _check_clean(self) -> None:
        paths = [self.repo / p for p in self.spec.editable + self.spec.readonly]
        dirty = gitops.git(self.repo, "status", "--porcelain", "--",
                           *[str(p.relative_to(self.repo)) for p in paths]).strip()
        if dirty:
            raise RatchetError("uncommitted changes in files the loop reads:\n" + dirty +
                               "\ncommit or stash them: the loop starts from your last commit")

    def _sandboxed(self, command: str, impl: str,
                   files: dict[str, str]) -> tuple[bool, _Log]:
        """A command (setup check, check) in the sandbox on a fresh copy of base + files."""
        cwd = self.trees.fresh(impl, files)
        try:
            proc = sandbox.run(["/bin/sh", "-c", command], cwd=cwd,
                               timeout=self.exp.timeout_seconds, artefacts=(),
                               readonly_inside=list(self.spec.readonly),
                               env=self.spec.command_env().env,
                               ro_paths=self.spec.command_env().ro_paths)
        finally:
            self.trees.discard(cwd)
        return proc.ok, _Log(proc)

    # ------------------------------------------------------------------ loop seams

    def extract(self, text: str, base: dict[str, str] | None = None) -> Extracted:
        base = base if base is not None else self.trees.tip_files(self.spec.editable)
        return apply_reply(text, base, self.spec.editable, self.exp.target.language)

    def evaluate(self, n: int, candidate: Extracted, references: dict[str, str],
                 run: RunRecord, follow_up: FollowUp | None) -> EvalResult:
        """Run; on a crash show the model the log tail and let it fix its idea (twice, when
        the proposer answers follow-ups); then the winner gate (plausibility, check)."""
        self.flag, self.progress = None, run.progress  # run_eval resets self.runs
        result = self.run_eval(self.exp, candidate.source, references, seed=n)
        for attempt in range(1, self.spec.fix_attempts + 1):
            f = result.failure
            if result.ok or f is None or f.kind not in FIXABLE or follow_up is None:
                break
            prompt = fix_prompt(candidate, f, self.spec, self.exp.target.language)
            run.text(f"fix{attempt}.prompt.md", prompt)
            try:
                proposal = follow_up(prompt)
            except ProposalFailed:
                break
            run.text(f"fix{attempt}.reply.md", proposal.text)
            try:
                fixed = self.extract(proposal.text, from_bundle(candidate.source))
            except ExtractionError:
                break
            candidate.source = fixed.source
            candidate.note = f"{candidate.note} (fixed after {attempt} retr" \
                             f"{'y' if attempt == 1 else 'ies'})"
            run.text("candidate.bundle", candidate.source)
            result = self.run_eval(self.exp, candidate.source, references, seed=n)
        inc = from_bundle(references.get("best", self.exp.naive_path.read_text("utf-8")))
        self.sizes = (code_lines(inc), code_lines(from_bundle(candidate.source)))
        result = self._constrained(result)
        if result.ok and "best" in references:
            result = self._gate(candidate, result, run)
        return result

    def baseline(self, source: str, references: dict[str, str], *, seed: int,
                 validate: bool = True) -> EvalResult:
        result = self._with_metrics(self.run_eval(self.exp, source, references, seed=seed,
                                                  validate=validate))
        rules = self.spec.parsed_constraints()
        broken = constraints_mod.broken(rules, self.runs.get("candidate", [])) \
            if result.ok and rules and not references else []
        if broken:  # the seed itself: every candidate like it would be refused
            raise RatchetError(f"the seed breaks the contract's constraints ({'; '.join(broken)}):"
                               " loosen them in experiment.json or fix the seed")
        return result

    @property
    def rule(self) -> str | None:
        """decision.json's rule in known-noise mode (None: the loop's paired rule)."""
        if self.known is None:
            return None
        acc = self.exp.acceptance
        return (f"known-noise mode: accept when a Student-t bound (the noise estimate's df) on"
                f" the candidate's mean against the incumbent's earlier runs is significant at"
                f" {acc.confidence:.0%}, alpha spent over the looks after up to {acc.confirm}"
                f" confirmation run(s), and the estimated gain is at least {acc.min_effect:.1%}")

    def judge(self, decision: Decision) -> Judgement:
        """One case, so no specialists: the paired verdict (or the known-noise one, which
        replaces what measure.decide made of unpaired runs) plus the size rule."""
        if self.known is not None and self.known.comparison is not None:
            decision.overall = decision.cases[CASE] = self.known.comparison
        return Judgement(is_best=self.accepts(decision.overall), cases_won=[])

    def run_eval(self, exp: Experiment, candidate_source: str, references: dict[str, str], *,
                 validate: bool = True, benchmark: bool = True, seed: int = 0,
                 keep_workdir: Path | None = None) -> EvalResult:
        """Candidate and references run interleaved (random order per round) until decided;
        each run on a fresh copy of its tree."""
        impls = {"candidate": candidate_source, **references}
        self.runs = {}  # the named metrics of this evaluation's runs only
        self.known = None
        if "best" in references and self.mode == "known_noise":
            from .knownnoise import evaluate as known_noise_eval

            return known_noise_eval(self, candidate_source, references)
        try:
            files = {name: files_of(src, self.spec.editable) for name, src in impls.items()}
        except ExtractionError as exc:
            return EvalResult(ok=False, phase="run",
                              failure=Failure(kind=exc.kind, message=exc.message))
        samples: dict[str, list[float]] = {name: [] for name in impls}
        outside: dict[str, dict[str, list[Any]]] = {
            name: {"wall_seconds": [], "cpu_seconds": [], "channel": []} for name in impls}
        trusted = [name for name in impls if name != "candidate"] or ["candidate"]
        logs: dict[str, str] = {}
        acc, rng, start = exp.acceptance, random.Random(seed), time.monotonic()
        with benchlock.bench_lock(exp.name):
            while True:
                batch = measure.rounds_to_next_look(len(samples["candidate"]), acc)
                for _ in range(batch):
                    order = list(impls)
                    rng.shuffle(order)
                    for name in order:
                        m = self._run_one(name, files[name])
                        logs[name] = m.log
                        for key in ("wall_seconds", "cpu_seconds", "channel"):
                            outside[name][key].append(getattr(m, key))
                        if m.value is None:
                            return self._failed(name, m, logs, outside)
                        samples[name].append(m.value)
                    why = self._channel_mismatch(outside, trusted)
                    if why:
                        m = Measured(None, logs["candidate"], "integrity", why)
                        return self._failed("candidate", m, logs, outside)
                if self.progress is not None and references:  # display only
                    self.progress(measure.progress(
                        {CASE: samples}, list(references), acc, exp.lower_is_better,
                        len(samples["candidate"])))
                if not self._more(samples, outside, references, acc, exp.lower_is_better,
                                  time.monotonic() - start):
                    break
        from .knownnoise import record_trusted

        mode = record_trusted(self, candidate_source, references, samples, outside)
        return EvalResult(ok=True, samples={CASE: samples}, rounds=len(samples["candidate"]),
                          unit=exp.unit, logs={f"{k}_last": v for k, v in logs.items()},
                          wall_seconds=time.monotonic() - start,
                          info={"outside": outside, "acceptance": mode})

    def _run_one(self, name: str, files: dict[str, str]) -> Measured:
        """One run on a fresh copy; a read-only file changed or a blocked write to one is an
        integrity failure."""
        cwd = self.trees.fresh(name, files)
        try:
            clock = time.monotonic()
            m = self.measure(cwd)
            self.metric_seconds += time.monotonic() - clock
            changed = self.trees.changed_readonly(cwd)
        finally:
            self.trees.discard(cwd)
        if changed:
            return replace(m, value=None, kind="integrity",
                           message=f"the run changed read-only file(s) {', '.join(changed)}")
        hit = blocked_write(m.log, self.spec.readonly) if m.kind == "crash" else None
        if hit:
            return replace(m, kind="integrity",
                           message=f"tried to modify read-only {hit} (blocked): {m.message}")
        if m.value is not None:
            self.runs.setdefault(name, []).append(m.metrics())
        return m

    def _with_metrics(self, result: EvalResult) -> EvalResult:
        """Every named metric of the runs in result.json: per run, and the medians."""
        result.info["metrics"] = {impl: constraints_mod.summary(runs)
                                  for impl, runs in self.runs.items()}
        result.info["metric_runs"] = self.runs
        return result

    def _constrained(self, result: EvalResult) -> EvalResult:
        """A candidate that breaks a contract constraint is rejected, kind `constraint`,
        whatever its primary metric (constraints.py)."""
        result = self._with_metrics(result)
        rules = self.spec.parsed_constraints()
        if not result.ok or not rules:
            return result
        reasons = constraints_mod.broken(rules, self.runs.get("candidate", []))
        result.info["constraints"] = {"checked": [str(c) for c in rules], "broken": reasons}
        if reasons:
            result.ok = False
            result.failure = Failure(kind="constraint", message="; ".join(reasons),
                                     detail=result.logs.get("candidate_last", "")[-2000:])
        return result

    def _channel_mismatch(self, outside: dict[str, dict[str, list[Any]]],
                          trusted: list[str]) -> str:
        """'auto': a candidate run must report where the trusted runs report."""
        if self.spec.metric.channel != "auto":
            return ""
        if self.channel is None:
            seen = [c for name in trusted for c in outside[name]["channel"] if c]
            self.channel = seen[0] if seen else None
        if self.channel is None or "candidate" in trusted:
            return ""
        if any(c and c != self.channel for c in outside["candidate"]["channel"]):
            if self.channel == "fd":
                return (f"the benchmark reports on {FD}, but this run wrote nothing there and"
                        " its number came from the output (stdout is not trusted)")
            return (f"this run wrote to {FD}, which the benchmark does not use (it prints its"
                    " metric): a value there can only come from the candidate")
        return ""

    def _failed(self, name: str, m: Measured, logs: dict[str, str],
                outside: dict[str, Any] | None = None) -> EvalResult:
        if name != "candidate":
            kind, message = "reference_failed", f"the {name} reference failed: {m.message}"
        else:
            kind, message = m.kind, m.message
        return EvalResult(ok=False, phase="run", logs={f"{name}_last": m.log},
                          info={"outside": outside or {}},
                          failure=Failure(kind=kind, message=message, detail=m.log[-2000:]))

    def _more(self, samples: dict[str, list[float]], outside: dict[str, dict[str, list[Any]]],
              references: dict[str, str], acc: Acceptance, lower: bool, elapsed: float) -> bool:
        n, cand = len(samples["candidate"]), samples["candidate"]
        if not references:  # a baseline: a constant metric needs no more than 3 runs
            return n < acc.min_rounds and (n < 3 or max(cand) != min(cand))
        ref = samples["best"] if "best" in samples else samples[next(iter(references))]
        if measure.needs_more_rounds({CASE: cand}, {CASE: ref}, acc, lower, elapsed):
            return True
        return self._cpu_question_open(samples, outside, acc, lower, elapsed)

    def _cpu_question_open(self, samples: dict[str, list[float]],
                           outside: dict[str, dict[str, list[Any]]], acc: Acceptance,
                           lower: bool, elapsed: float) -> bool:
        """A would-be winner whose CPU time looks worse gets rounds until the test can tell."""
        n = len(samples["candidate"])
        if ("best" not in samples or n >= min(acc.max_rounds, PLAUSIBILITY_ROUNDS)
                or elapsed >= acc.max_seconds
                or not is_time_metric(self.spec, self.exp.unit, lower)):
            return False
        cpu = _cpu_pairs(outside)
        if cpu is None or measure.compare(samples["candidate"], samples["best"], acc, lower,
                                          final=True).verdict != "better":
            return False
        ratio = statistics.median(a / b for a, b in zip(*cpu, strict=True))
        return ratio >= 1 + acc.min_effect and cpu_comparison(*cpu, acc).verdict != "worse"

    def accepts(self, overall: Comparison) -> bool:
        """The paired verdict, then the size rule (see contract.SizeRule); a flagged
        implausible winner is noted in the reasons (decision.json)."""
        if self.flag:
            overall.reasons.append(f"implausible (flagged; contract implausible=flag):"
                                   f" {self.flag}")
        rule, (before, after) = self.spec.size_rule, self.sizes
        min_effect = self.exp.acceptance.min_effect
        gain = overall.speedup - 1 if math.isfinite(overall.speedup) else math.inf
        if overall.verdict == "better":
            if gain < 2 * min_effect and after - before > rule.max_added_lines:
                overall.verdict = "same"
                overall.reasons.append(f"size rule: gain {gain:.1%} < 2x min_effect adds"
                                       f" {after - before} lines (> {rule.max_added_lines})")
                return False
            return True
        not_worse = overall.verdict == "same" and not (gain < -min_effect)
        removed = 100.0 * (before - after) / before if before else 0.0
        if not_worse and removed >= rule.min_removed_pct and before > after:
            overall.reasons.append(f"size rule: metric not worse and {removed:.0f}% fewer lines")
            return True
        return False

    # ------------------------------------------------------------------ the winner gate

    def _gate(self, candidate: Extracted, result: EvalResult, run: RunRecord) -> EvalResult:
        """Only for a would-be winner: the plausibility rule, then the check command."""
        samples, acc = result.samples[CASE], self.exp.acceptance
        overall = (copy.deepcopy(self.known.comparison)
                   if self.known is not None and self.known.comparison is not None else
                   measure.compare(samples["candidate"], samples["best"], acc,
                                   self.exp.lower_is_better, final=True))
        if not self.accepts(copy.deepcopy(overall)):
            return result
        finding = self._plausibility(overall, result.info.get("outside", {}),
                                     result.info.get("incumbent_cpu"))
        result.info["plausibility"] = finding
        if finding.get("implausible"):
            self.flag = finding["text"]
            if self.spec.implausible == "reject":
                overall.reasons.append(f"implausible (rejected; contract implausible=reject):"
                                       f" {self.flag}")
                run.json("decision.json", {"is_best": False, "overall": overall.to_dict(),
                                           "plausibility": finding})
                result.ok = False
                result.failure = Failure(kind="implausible", message=self.flag,
                                         detail=result.logs.get("candidate_last", "")[-2000:])
                return result
            candidate.note = f"{candidate.note} [implausible: {finding['short']}]"
        if self.spec.check_command:
            ok, log = self._sandboxed(self.spec.check_command, "check",
                                      files_of(candidate.source, self.spec.editable))
            result.logs["check"] = log.text
            if not ok:
                result.ok = False
                result.failure = Failure(
                    kind="check", detail=log.text[-2000:],
                    message=f"check `{self.spec.check_command}` failed ({ok_text(log)})")
        return result

    def _plausibility(self, overall: Comparison, outside: dict[str, dict[str, list[Any]]],
                      incumbent_cpu: list[float] | None = None) -> dict[str, Any]:
        acc = self.exp.acceptance
        if overall.verdict != "better":
            return {"checked": False, "why": "accepted by the size rule, not as better"}
        if not is_time_metric(self.spec, self.exp.unit, self.exp.lower_is_better):
            return {"checked": False, "why": f"the metric ({self.exp.unit or 'no unit'}) is"
                    " not a time where lower is better (set generic.metric_is_time)"}
        if self.known is not None:  # no paired runs: the incumbent's trusted runs stand in
            from .knownnoise import cpu_finding

            finding = cpu_finding(outside.get("candidate", {}).get("cpu_seconds", []),
                                  incumbent_cpu or [], acc)
            if not finding["checked"]:
                return finding
            worse = bool(finding["implausible"])
            cpu_ratio = float(finding["cpu"]["ratio"])
            where = (f"over the candidate's {finding['cpu']['candidate_runs']} run(s) against"
                     f" the incumbent's last {finding['cpu']['incumbent_runs']}")
        else:
            cpu = _cpu_pairs(outside)
            if cpu is None:
                return {"checked": False, "why": "the sandbox did not measure CPU time"}
            cmp = cpu_comparison(*cpu, acc)
            worse = cmp.verdict == "worse" and cmp.ratio >= 1 + acc.min_effect
            cpu_ratio = cmp.ratio
            where = (f"[{cmp.ci_low:.2f}, {cmp.ci_high:.2f}] over the same {cmp.rounds}"
                     " interleaved runs")
            finding = {"checked": True, "implausible": worse, "cpu": cmp.to_dict()}
        finding.update(metric_speedup=overall.speedup, action=self.spec.implausible)
        if worse:
            finding["short"] = (f"metric x{overall.speedup:.2f} better, CPU x{cpu_ratio:.2f}"
                                " worse")
            finding["text"] = (
                f"the metric claims x{overall.speedup:.2f} better, but the command's CPU time"
                f" went x{cpu_ratio:.2f} up {where} (measured outside the command)")
        return finding

    def commit(self, candidate: Extracted, message: str) -> str:
        sha = self.trees.commit(files_of(candidate.source, self.spec.editable), message)
        self.trial_state.promote(trials.key_of(candidate.source))  # its runs: the incumbent's
        self.trial_state.save(self.exp.root)
        return sha

    def record(self, paths: list[Path], message: str) -> None:
        """Nothing: SCORES, MEMORY and winners/ stay out of the user's branches."""


class _Log:
    """What a setup/check run left: its output tail and how it ended."""

    def __init__(self, proc: sandbox.SandboxResult) -> None:
        self.text = (proc.stdout + ("\n" + proc.stderr if proc.stderr else ""))[-8000:]
        self.proc = proc


def ok_text(log: _Log) -> str:
    p = log.proc
    if p.timed_out:
        return "timed out"
    if p.error:
        return f"sandbox failed: {p.error}"
    return f"exit {p.returncode}"


def _cpu_pairs(outside: dict[str, dict[str, list[Any]]]) -> tuple[list[float], list[float]] | None:
    c = outside.get("candidate", {}).get("cpu_seconds", [])
    r = outside.get("best", {}).get("cpu_seconds", [])
    n = min(len(c), len(r))
    if n < 3 or any(not (isinstance(v, int | float) and v > 0) for v in c[:n] + r[:n]):
        return None
    return [float(v) for v in c[:n]], [float(v) for v in r[:n]]


def cpu_comparison(cand: list[float], ref: list[float], acc: Acceptance) -> Comparison:
    """measure.compare on CPU seconds, once, after the fact (the sequential schedule belongs
    to the metric): a schedule of looks at 3 and n rounds, judged at n."""
    n = min(len(cand), len(ref))
    once = Acceptance(min_effect=acc.min_effect, confidence=acc.confidence, min_rounds=n,
                      max_rounds=n, batch_rounds=n, max_seconds=acc.max_seconds)
    return measure.compare(cand[:n], ref[:n], once, lower_is_better=True, final=True)


def fix_prompt(candidate: Extracted, failure: Failure, spec: GenericSpec, language: str) -> str:
    files = from_bundle(candidate.source)
    shown = "\n\n".join(f"File: {p}\n```{language}\n{files[p].rstrip()}\n```" for p in files)
    return (f"Your change ({candidate.note}) failed when `{spec.run_command}` ran:"
            f" {failure.kind}: {failure.message}\n\nLast lines of the log:\n```\n"
            f"{failure.detail[-2500:]}\n```\n\nThe files as your change left them:\n\n{shown}\n\n"
            "Fix the problem while keeping the idea. Reply in the same format: whole files"
            " (`File: <path>` then a fenced block) or SEARCH/REPLACE blocks, then"
            " `Note: <what you changed>`.\n")
