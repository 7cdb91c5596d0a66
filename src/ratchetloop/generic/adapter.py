"""Generic mode's side of the core loop: the Session.adapter the loop calls at its seams.

Nothing here is a second loop. The core's iterate() still builds the prompt, asks the
proposer, dedups, checks security, decides, records memory and scores; this adapter only
(1) turns a reply into a bundle of editable files, (2) runs the user's command in git
worktrees -- candidate and incumbent interleaved, round after round, inside the sandbox --
and returns the same samples[case][impl] an eval.py would, (3) compares (zero-variance
metrics are decided on the effect size), (4) applies the size rule and (5) commits
winners on the ratchet/<tag> branch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import benchlock, gitops, measure, sandbox
from ..errors import RatchetError
from ..evaluate import EvalResult, Failure
from ..experiment import Acceptance, Experiment
from ..extract import Extracted, ExtractionError
from ..proposers.base import ProposalFailed
from ..proposers.replay import ReplayProposer
from .contract import GenericSpec, read_metric, spec_of
from .edits import apply_reply, code_lines, from_bundle, to_bundle
from .worktree import Worktrees

CASE = "metric"
FIXABLE = {"crash", "no_metric", "timeout"}


@dataclass
class Measured:
    """One run of the metric in one directory."""

    value: float | None
    log: str
    kind: str = ""  # crash, no_metric, timeout when value is None
    message: str = ""


Measure = Callable[[Path], Measured]


def command_measure(spec: GenericSpec, timeout: float, target: str) -> Measure:
    """The run command through the sandbox; `{target}` is the first editable file."""
    command = spec.run_command.replace("{target}", target)

    def run(cwd: Path) -> Measured:
        proc = sandbox.run(["/bin/sh", "-c", command], cwd=cwd, timeout=timeout)
        log = (proc.stdout + ("\n" + proc.stderr if proc.stderr else ""))[-8000:]
        if proc.timed_out:
            return Measured(None, log, "timeout", f"run command exceeded {timeout:.0f}s")
        if proc.error:
            return Measured(None, log, "crash", f"sandbox failed: {proc.error}")
        if proc.returncode != 0:
            return Measured(None, log, "crash", f"run command exited {proc.returncode}")
        value = read_metric(proc.stdout, spec.metric) or read_metric(proc.stdout + proc.stderr,
                                                                     spec.metric)
        if value is None:
            return Measured(None, log, "no_metric", f"no metric ({spec.metric.kind}) in output")
        return Measured(value, log)

    return run


class GenericAdapter:
    def __init__(self, exp: Experiment, measure_fn: Measure | None = None) -> None:
        self.exp, self.spec = exp, spec_of(exp)
        self.repo = gitops.repo_root(exp.root)
        self.trees = Worktrees(self.repo, self.spec.tag, exp.root)
        self.measure = measure_fn or command_measure(self.spec, exp.timeout_seconds,
                                                     self.spec.editable[0])
        self.sizes: tuple[int, int] = (0, 0)  # incumbent, candidate non-blank lines
        self.metric_seconds = 0.0  # time spent inside the metric (for the overhead bench)

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Branch + worktrees; seed bundle from the branch base; the setup check, once."""
        self._check_clean()
        created = self.trees.prepare()
        seed = self.exp.naive_path
        if created or not seed.is_file():
            seed.write_text(to_bundle(self.trees.base_files(self.spec.editable)), "utf-8")
        if self.spec.setup_check:
            proc = sandbox.run(["/bin/sh", "-c", self.spec.setup_check],
                               cwd=self.trees.dir("best"), timeout=self.exp.timeout_seconds)
            if not proc.ok:
                output = (proc.stdout + proc.stderr)[-3000:]
                raise RatchetError(f"setup check `{self.spec.setup_check}` failed"
                                   f" (exit {proc.returncode}):\n{output}")

    def _check_clean(self) -> None:
        paths = [self.repo / p for p in self.spec.editable + self.spec.readonly]
        dirty = gitops.git(self.repo, "status", "--porcelain", "--",
                           *[str(p.relative_to(self.repo)) for p in paths]).strip()
        if dirty:
            raise RatchetError("uncommitted changes in files the loop reads:\n" + dirty +
                               "\ncommit or stash them: the loop starts from your last commit")

    # ------------------------------------------------------------------ loop seams

    def extract(self, text: str, base: dict[str, str] | None = None) -> Extracted:
        base = base if base is not None else self.trees.read("best", self.spec.editable)
        return apply_reply(text, base, self.spec.editable, self.exp.target.language)

    def evaluate(self, s: Any, n: int, candidate: Extracted, references: dict[str, str],
                 run: Any) -> EvalResult:
        """Run; on a crash show the model the log tail and let it fix its idea (twice)."""
        result = self.run_eval(self.exp, candidate.source, references, seed=n)
        for attempt in range(1, self.spec.fix_attempts + 1):
            f = result.failure
            if result.ok or f is None or f.kind not in FIXABLE or not self._can_fix(s):
                break
            prompt = fix_prompt(candidate, f, self.spec, self.exp.target.language)
            run.text(f"fix{attempt}.prompt.md", prompt)
            try:
                proposal = s.proposer.propose(prompt)
            except ProposalFailed as exc:
                s.scores.usage.add(exc.usage)
                break
            s.scores.usage.add(proposal.usage)
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
        return result

    def _can_fix(self, s: Any) -> bool:
        return bool(s.proposer.is_language_model or isinstance(s.proposer, ReplayProposer))

    def run_eval(self, exp: Experiment, candidate_source: str, references: dict[str, str], *,
                 validate: bool = True, benchmark: bool = True, seed: int = 0,
                 keep_workdir: Path | None = None) -> EvalResult:
        """Candidate and references run interleaved (random order per round) until decided."""
        impls = {"candidate": candidate_source, **references}
        dirs = {name: self.trees.materialise(name, from_bundle(src))
                for name, src in impls.items()}
        samples: dict[str, list[float]] = {name: [] for name in impls}
        logs: dict[str, str] = {}
        acc, rng, start = exp.acceptance, random.Random(seed), time.monotonic()
        with benchlock.bench_lock(exp.name):
            while True:
                n = len(samples["candidate"])  # 3 first (enough for a constant metric),
                batch = 3 if not n else max(1, measure.next_look(n + 1, acc) - n)  # then looks
                for _ in range(batch):
                    order = list(impls)
                    rng.shuffle(order)
                    for name in order:
                        clock = time.monotonic()
                        m = self.measure(dirs[name])
                        self.metric_seconds += time.monotonic() - clock
                        logs[name] = m.log
                        if m.value is None:
                            return self._failed(name, m, logs)
                        samples[name].append(m.value)
                if not self._more(samples, references, acc, exp.lower_is_better,
                                  time.monotonic() - start):
                    break
        return EvalResult(ok=True, samples={CASE: samples}, rounds=len(samples["candidate"]),
                          unit=exp.unit, logs={f"{k}_last": v for k, v in logs.items()},
                          wall_seconds=time.monotonic() - start)

    def _failed(self, name: str, m: Measured, logs: dict[str, str]) -> EvalResult:
        if name != "candidate":
            kind, message = "reference_failed", f"the {name} reference failed: {m.message}"
        else:
            kind, message = m.kind, m.message
        return EvalResult(ok=False, phase="run", logs={f"{name}_last": m.log},
                          failure=Failure(kind=kind, message=message, detail=m.log[-2000:]))

    def _more(self, samples: dict[str, list[float]], references: dict[str, str],
              acc: Acceptance, lower: bool, elapsed: float) -> bool:
        n = len(samples["candidate"])
        if not references:
            return n < min(acc.min_rounds, 3) or (n < acc.min_rounds and not _constant(
                samples["candidate"]))
        ref = samples["best"] if "best" in samples else samples[next(iter(references))]
        if _constant(samples["candidate"]) and _constant(ref):
            return False
        c, r = positive(samples["candidate"], ref)
        return measure.needs_more_rounds({CASE: c}, {CASE: r}, acc, lower, elapsed)

    def compare(self, cand: list[float], ref: list[float], acc: Acceptance,
                lower: bool) -> measure.Comparison:
        """measure.compare, except: constant samples are decided on the effect size alone,
        and non-positive metrics are shifted positive first (log-ratios need > 0)."""
        if len(cand) >= 3 and _constant(cand) and _constant(ref):
            return exact_comparison(cand[0], ref[0], len(cand), acc, lower)
        c, r = positive(cand, ref)
        out = measure.compare(c, r, acc, lower, final=True)
        if (c, r) != (cand, ref):
            out.reasons.append("metric shifted positive for the ratio test")
        return out

    def accepts(self, overall: measure.Comparison) -> bool:
        """The paired verdict, then the size rule (see contract.SizeRule)."""
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

    def commit(self, candidate: Extracted, message: str) -> str:
        return self.trees.commit(from_bundle(candidate.source), message)


# ---------------------------------------------------------------------- statistics


def _constant(values: list[float]) -> bool:
    return len(values) >= 1 and max(values) == min(values)


def positive(cand: list[float], ref: list[float]) -> tuple[list[float], list[float]]:
    both = cand + ref
    if not both or min(both) > 0:
        return cand, ref
    shift = 1.0 - min(both) + max(abs(v) for v in both)
    return [v + shift for v in cand], [v + shift for v in ref]


def exact_comparison(c: float, r: float, n: int, acc: Acceptance,
                     lower: bool) -> measure.Comparison:
    """A deterministic metric: no noise, so the effect size is the whole answer."""
    gain = (r - c) if lower else (c - r)
    rel = gain / abs(r) if r else (math.inf if gain > 0 else (-math.inf if gain < 0 else 0.0))
    verdict: measure.Verdict = ("better" if rel >= acc.min_effect and gain > 0 else
                                "worse" if gain < 0 else "same")
    ratio = c / r if c > 0 and r > 0 else math.nan
    return measure.Comparison(
        verdict=verdict, ratio=ratio, ci_low=ratio, ci_high=ratio,
        p_value=0.0 if verdict == "better" else 1.0, rounds=n, candidate_median=c,
        reference_median=r, noise=0.0, lower_is_better=lower,
        reasons=[f"zero variance: decided on the effect size ({rel:+.2%} vs min_effect"
                 f" {acc.min_effect:.1%})"])


def fix_prompt(candidate: Extracted, failure: Failure, spec: GenericSpec, language: str) -> str:
    files = from_bundle(candidate.source)
    shown = "\n\n".join(f"File: {p}\n```{language}\n{files[p].rstrip()}\n```" for p in files)
    return (f"Your change ({candidate.note}) failed when `{spec.run_command}` ran:"
            f" {failure.kind}: {failure.message}\n\nLast lines of the log:\n```\n"
            f"{failure.detail[-2500:]}\n```\n\nThe files as your change left them:\n\n{shown}\n\n"
            "Fix the problem while keeping the idea. Reply in the same format: whole files"
            " (`File: <path>` then a fenced block) or SEARCH/REPLACE blocks, then"
            " `Note: <what you changed>`.\n")
