"""Generic mode's evaluation in known-noise mode (ratchetloop.trials has the rule).

The workspace calls `evaluate` instead of its paired rounds when the mode is known_noise:
the incumbent's earlier runs (trials.json) stand in for re-running it, a candidate gets one
run, more only when borderline and to confirm a would-be winner. Every run still goes
through the workspace's `_run_one` (fresh copy, sandbox, read-only checks) and the result
channel rule; `record_trusted` feeds the paired mode's trusted runs into the same state, so
the noise estimate and the run cost are known whichever mode judged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import benchlock, trials
from ..evaluate import EvalResult, Failure
from ..experiment import Acceptance
from ..extract import ExtractionError
from .edits import files_of

if TYPE_CHECKING:
    from .workspace import GenericWorkspace, Measured

CASE = "metric"


def evaluate(ws: GenericWorkspace, candidate_source: str, references: dict[str, str]
             ) -> EvalResult:
    """One candidate against the incumbent ("best") in known-noise mode."""
    from .workspace import Measured

    exp, state = ws.exp, ws.trial_state
    try:
        files = {"candidate": files_of(candidate_source, ws.spec.editable),
                 "best": files_of(references["best"], ws.spec.editable)}
    except ExtractionError as exc:
        return EvalResult(ok=False, phase="run", failure=Failure(kind=exc.kind,
                                                                 message=exc.message))
    if ws.channel is None and state.channel:
        ws.channel = state.channel  # learned from the trusted runs of an earlier `ratchet run`
    outside: dict[str, dict[str, list[Any]]] = {
        name: {"wall_seconds": [], "cpu_seconds": [], "channel": []} for name in files}
    logs: dict[str, str] = {}
    failed: list[tuple[str, Measured]] = []

    def one(name: str) -> float | None:
        m = ws._run_one(name, files[name])
        logs[name] = m.log
        for key in ("wall_seconds", "cpu_seconds", "channel"):
            outside[name][key].append(getattr(m, key))
        if m.value is None:
            failed.append((name, m))
            return None
        state.add_cpu(keys[name], [m.cpu_seconds])
        if name == "best":
            state.add_seconds([m.wall_seconds or 0.0])
        why = ws._channel_mismatch(outside, ["best"])
        if why:
            failed.append(("candidate", Measured(None, logs["candidate"], "integrity", why)))
            return None
        return m.value

    keys = {"candidate": trials.key_of(candidate_source), "best": trials.key_of(references["best"])}
    start = time.monotonic()
    with benchlock.bench_lock(exp.name):
        trial = trials.evaluate(state, keys["best"], keys["candidate"], exp.acceptance,
                                exp.lower_is_better, lambda: one("candidate"),
                                lambda: one("best"), lambda: time.monotonic() - start)
    state.channel = ws.channel or state.channel
    state.save(exp.root)
    if failed:
        name, m = failed[0]
        return ws._failed(name, m, logs, outside)
    assert trial.comparison is not None
    trial.comparison.reasons.insert(0, f"known-noise mode ({ws.why})")
    ws.known = trial
    return EvalResult(ok=True, samples={CASE: {"candidate": trial.candidate,
                                               "best": trial.incumbent}},
                      rounds=len(trial.candidate), unit=exp.unit,
                      logs={f"{k}_last": v for k, v in logs.items()},
                      wall_seconds=time.monotonic() - start,
                      info={"outside": outside, "incumbent_cpu": state.cpu.get(keys["best"], []),
                            "acceptance": {"mode": ws.mode, "why": ws.why, **trial.info()}})


def cpu_finding(cand: list[float], inc: list[float], acc: Acceptance) -> dict[str, Any]:
    """The plausibility question without paired runs: did the command's CPU time (measured
    outside it) go up while the metric claims a gain? The fastest of the candidate's runs
    against the fastest of the incumbent's trusted runs (this and earlier evaluations):
    interference only ever adds CPU time, so the minimum is the stable estimate where a
    median of two or three unpaired runs is not. "worse" from x(1 + max(min_effect, 10%))."""
    cand = [v for v in cand if v and v > 0]
    inc = [v for v in inc if v and v > 0]
    if not cand or len(inc) < 2:
        return {"checked": False, "why": "known-noise mode: too few CPU measurements"
                f" ({len(cand)} candidate, {len(inc)} incumbent runs)"}
    ratio = min(cand) / min(inc)
    bound = 1 + max(acc.min_effect, 0.1)
    return {"checked": True, "implausible": ratio >= bound,
            "cpu": {"verdict": "worse" if ratio >= bound else "same", "ratio": ratio,
                    "bound": bound, "candidate_runs": len(cand), "incumbent_runs": len(inc)}}


def record_trusted(ws: GenericWorkspace, candidate_source: str, references: dict[str, str],
                   samples: dict[str, list[float]], outside: dict[str, dict[str, list[Any]]]
                   ) -> dict[str, str]:
    """After a paired evaluation: the seed's runs (a baseline) or the incumbent's runs
    update the noise and the run cost; the candidate's runs wait for a commit."""
    state = ws.trial_state
    if not references:
        trusted, source = "candidate", candidate_source
    elif "best" in references:
        trusted, source = "best", references["best"]
        state.pending = trials.key_of(candidate_source)
        state.pending_runs = list(samples["candidate"])
    else:  # a drift re-measure of the best against the seed: not the incumbent's level
        return {"mode": ws.mode, "why": ws.why}
    state.add_incumbent_runs(trials.key_of(source), samples[trusted])
    state.add_cpu(trials.key_of(source), list(outside[trusted]["cpu_seconds"]))
    state.add_seconds([v or 0.0 for v in outside[trusted]["wall_seconds"]])
    state.channel = ws.channel or state.channel
    state.save(ws.exp.root)
    ws.choose_mode()
    return {"mode": ws.mode, "why": ws.why}
