"""The embedded default proposer: an offline knob search, not a language model.

It asks Optuna (TPE, ask/tell) for a combination of the knobs an experiment declares,
renders the experiment's template with it, and answers in the same format a model would,
so the reply goes through the very same pipeline: extraction, dedup, security, sandboxed
evaluation, statistics, memory and git. Past attempts on disk warm-start the search.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
from typing import Any, Literal

import optuna

from ..errors import RatchetError
from ..experiment import Experiment, import_file
from ..runs import attempts
from .base import BaseProposer, Feedback, Proposal, Usage

optuna.logging.set_verbosity(logging.WARNING)


class TunerExhausted(RatchetError):
    """Every knob combination has been tried: the run ends normally, with its summary."""

    stop_quietly = True


class TunerProposer(BaseProposer):
    name = "tuner"
    answers_follow_ups = False  # it renders templates; it cannot read a fix request
    announcement = ("tuner: an offline search over the experiment's declared knobs"
                    " (Optuna TPE) - not a language model; no key, no tokens, no cost")

    def __init__(self, experiment: Experiment, seed: int = 0) -> None:
        if not experiment.knobs or not experiment.template:
            raise RatchetError(
                f"experiment {experiment.name!r} declares no tuner knobs/template;"
                " pass --model to use a language model"
            )
        self.experiment = experiment
        self.template = import_file(experiment.path(experiment.template),
                                    f"ratchet_tuner_{experiment.name}")
        self.space: dict[str, optuna.distributions.BaseDistribution] = {
            name: optuna.distributions.CategoricalDistribution(tuple(values))
            for name, values in experiment.knobs.items()
        }
        self.size = 1
        for values in experiment.knobs.values():
            self.size *= len(values)
        direction: Literal["minimize", "maximize"] = (
            "minimize" if experiment.lower_is_better else "maximize")
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self.tried: dict[str, float | None] = {}
        self.pending: dict[int, optuna.trial.Trial] = {}
        # the outer loop's restriction (apply_strategy): knobs held at a value, and the
        # share of proposals drawn at random instead of by TPE
        self.frozen: dict[str, Any] = {}
        self.exploration = 0.0
        self.rng = random.Random(seed)
        self._warm_start()
        self._start_at_defaults()

    def _key(self, params: dict[str, Any]) -> str:
        return json.dumps(params, sort_keys=True)

    def _warm_start(self) -> None:
        """Teach the study what earlier runs of this experiment measured."""
        for a in attempts(self.experiment.root):
            params = (a.get("meta") or {}).get("knobs")
            if not isinstance(params, dict) or set(params) != set(self.space):
                continue
            if any(params[k] not in self.experiment.knobs[k] for k in params):
                continue
            score = a.get("score")
            self._tell_known(params, score if isinstance(score, int | float) else None)

    def _start_at_defaults(self) -> None:
        """The template's DEFAULTS (its author's best-known combination), when it declares
        them and they were never tried, are the first proposal: a run starts from the
        known-good kernel, and TPE searches around what it measured."""
        defaults = getattr(self.template, "DEFAULTS", None)
        if not isinstance(defaults, dict):
            return
        start = {k: defaults.get(k) for k in self.space}
        if all(start[k] in self.experiment.knobs[k] for k in start) and \
                self._key(start) not in self.tried:
            self.study.enqueue_trial(start)

    def _tell_known(self, params: dict[str, Any], score: float | None) -> None:
        key = self._key(params)
        if key in self.tried:
            return
        self.tried[key] = score
        state = optuna.trial.TrialState.COMPLETE if score is not None else (
            optuna.trial.TrialState.FAIL)
        self.study.add_trial(optuna.trial.create_trial(
            params=params, distributions=self.space, value=score, state=state))

    def apply_strategy(self, strategy: Any) -> None:
        """Freeze knobs (a value the experiment declares) and set the random share; the
        search space shrinks to the free knobs, the study keeps everything it learned."""
        frozen = getattr(strategy, "freeze", None) or {}
        self.frozen = {k: v for k, v in frozen.items()
                       if k in self.space and v in self.experiment.knobs[k]}
        self.exploration = min(1.0, max(0.0, float(getattr(strategy, "exploration", 0.0))))

    def _free(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The space TPE searches: every knob not frozen. A frozen space with nothing
        left untried is released (the strategy cannot be honoured there)."""
        if self.frozen and self._untried(self.frozen) is None:
            self.frozen = {}
        return {k: d for k, d in self.space.items() if k not in self.frozen}

    def _untried(self, fixed: dict[str, Any]) -> dict[str, Any] | None:
        """A random untried combination holding `fixed`: drawn, or, after 64 draws that
        were all tried, picked from the whole list (when it is short enough to make)."""
        knobs = self.experiment.knobs
        for _ in range(64):
            params = {k: fixed[k] if k in fixed else self.rng.choice(knobs[k])
                      for k in self.space}
            if self._key(params) not in self.tried:
                return params
        free = [k for k in self.space if k not in fixed]
        if math.prod(len(knobs[k]) for k in free) > 100_000:
            return None
        rest = [{**fixed, **dict(zip(free, values, strict=True))}
                for values in itertools.product(*(knobs[k] for k in free))]
        rest = [p for p in rest if self._key(p) not in self.tried]
        return self.rng.choice(rest) if rest else None

    def propose(self, prompt: str) -> Proposal:
        space = self._free()
        for attempt in range(200):
            if len(self.tried) >= self.size:
                break
            # a random draw: the strategy's share, and whenever TPE keeps repeating itself
            if attempt >= 50 or (self.exploration and self.rng.random() < self.exploration):
                pick = self._untried(self.frozen)
                if pick:
                    self.study.enqueue_trial({k: pick[k] for k in space})
            trial = self.study.ask(space)
            params = {k: self.frozen.get(k, trial.params.get(k)) for k in self.space}
            key = self._key(params)
            if key in self.tried:
                known = self.tried[key]
                if known is None:
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    self.study.tell(trial, known)
                continue
            self.tried[key] = None
            self.pending[trial.number] = trial
            source = self.render(params)
            knobs = ", ".join(f"{k}={v}" for k, v in params.items())
            text = f"```{self.experiment.target.language}\n{source.rstrip()}\n```\nNote: {knobs}\n"
            return Proposal(text=text, usage=Usage(), model=self.name,
                            meta={"knobs": params, "trial": trial.number})
        raise TunerExhausted(
            f"tuner has tried all {self.size} knob combinations of {self.experiment.name}")

    def render(self, params: dict[str, Any]) -> str:
        """The experiment's template is its own code: a failure there is a setup error to
        name (e.g. knobs in experiment.json that template.py does not know), not a crash."""
        try:
            return str(self.template.render(params))
        except Exception as exc:
            raise RatchetError(
                f"{self.experiment.path(self.experiment.template or 'template.py')}:"
                f" render({params}) failed: {type(exc).__name__}: {exc}") from None

    def observe(self, proposal: Proposal, feedback: Feedback) -> None:
        trial = self.pending.pop(proposal.meta.get("trial", -1), None)
        if trial is None:
            return
        key = self._key(proposal.meta.get("knobs") or trial.params)
        if feedback.score is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.tried[key] = feedback.score
            self.study.tell(trial, feedback.score)
