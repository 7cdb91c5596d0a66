"""The outer loop (--outer-every): the trace, the rule-based step, the model step through
the official SDK against a local fake server, the tuner honouring a strategy, and real runs
that write, commit and score strategy versions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EXPERIMENTS, git, run_ratchet
from fakeservers import FakeModelServer, Reply

from ratchetloop import experiment as experiment_mod
from ratchetloop.experiment import Experiment
from ratchetloop.proposers.base import Feedback
from ratchetloop.proposers.registry import resolve
from ratchetloop.proposers.retry import RetryPolicy
from ratchetloop.proposers.tuner import TunerProposer
from ratchetloop.strategy import (
    Outer,
    Strategy,
    build_trace,
    parse_reply,
    prompt_section,
    rule_based_step,
)

LINEAR_DEFAULT = {"simd": "avx512", "rows": 4, "cols": 3, "kc": 0, "order": "oc_outer",
                  "pack": 0, "prefetch": 0, "large": "dot", "tile": "2x12"}


@pytest.fixture(scope="module")
def linear() -> Experiment:
    """The shipped linear contract, read only (its knobs and template)."""
    return experiment_mod.load(EXPERIMENTS / "linear")


def attempt(n: int, status: str, score: float | None, ratio: float | None = None,
            note: str = "", **knobs: Any) -> dict[str, Any]:
    """An attempt.json as the loop writes it, with the tuner's knobs in meta."""
    return {"iteration": n, "status": status, "score": score, "ratio": ratio, "note": note,
            "failure_kind": None, "message": "", "usage": {"cost_usd": 0.0},
            "meta": {"knobs": {**LINEAR_DEFAULT, **knobs}}}


def failure(n: int, kind: str, message: str) -> dict[str, Any]:
    return {"iteration": n, "status": "failed", "failure_kind": kind, "message": message,
            "score": None, "note": "", "usage": {"cost_usd": 0.01}, "meta": {}}


def winners_agree_on_avx512() -> list[dict[str, Any]]:
    """Three best winners, all avx512 with 4x6 tiles; the avx2 tries measured slower."""
    return [
        attempt(1, "accepted_best", 900.0, 0.5, "a", rows=2, tile="4x6"),
        attempt(2, "rejected", 1500.0, 1.6, "b", simd="avx2", rows=2, tile="4x6"),
        attempt(3, "accepted_best", 800.0, 0.8, "c", rows=6, tile="4x6"),
        attempt(4, "rejected", 1400.0, 1.7, "d", simd="avx2", rows=6, tile="2x12"),
        attempt(5, "accepted_best", 700.0, 0.8, "e", rows=1, tile="4x6"),
        attempt(6, "rejected", 950.0, 1.3, "f", rows=1, tile="2x12"),
    ]


def test_trace_counts_rates_failures_cost_and_winning_ideas():
    records = [*winners_agree_on_avx512(),
               failure(7, "build_error", "x.c:3:1: error: 'foo' undeclared"),
               failure(8, "build_error", "y.c:9:2: error: 'bar' undeclared"),
               failure(9, "wrong_result", "case qkv: max error 0.5")]
    trace = build_trace(records, 3, 9, lower_is_better=True)
    assert (trace.attempts, trace.accepted, trace.total_attempts) == (7, 2, 9)
    assert trace.accept_rate == pytest.approx(2 / 7)
    # the two build errors differ only in names and places: one signature, counted twice
    assert list(trace.failures.values()) == [2, 1]
    assert trace.cost_usd == pytest.approx(0.03)
    assert trace.gain == pytest.approx(1.25 * 1.25)
    assert trace.cost_per_gain == pytest.approx(0.03 / 56.25)
    assert [w.note for w in trace.winners] == ["c", "e"]
    assert [w.iteration for w in trace.recent_winners] == [1, 3, 5]


def test_rule_step_freezes_what_every_recent_winner_shares_and_measured_best(linear):
    records = winners_agree_on_avx512()
    for r in records:  # the winners vary in kc and large: those stay free
        r["meta"]["knobs"].update(kc=[0, 256, 512, 1024][r["iteration"] % 4],
                                  large=["dot", "outer32", "outer16"][r["iteration"] % 3])
    records.append(attempt(7, "rejected", 650.0, 0.93, "g", pack=1, kc=256, tile="4x6"))
    records.append(attempt(8, "rejected", 660.0, 0.94, "h", pack=1, kc=256, tile="4x6"))
    trace = build_trace(records, 1, 8, True)
    new = rule_based_step(trace, linear, Strategy())
    # simd: shared by the winners and the better median of both values; rows, kc and large
    # differ among the winners; pack=0 is shared but pack=1 measured better; tile 4x6 and
    # cols=3 are shared, but 1x24 and 3x8 tiles and other cols were never measured
    assert new.freeze == {"simd": "avx512"}
    assert new.exploration == 0.0 and new.source == "rules"
    assert "keep simd=avx512" in new.directions_pursue
    assert any(d.startswith("a (won x2.000") for d in new.directions_pursue)


def test_rule_step_leaves_free_knobs_and_needs_two_winners(linear):
    one = build_trace(winners_agree_on_avx512()[:2], 1, 2, True)
    assert rule_based_step(one, linear, Strategy()).freeze == {}
    fib = experiment_mod.load(EXPERIMENTS / "fib")  # one knob: never frozen
    records = [{**attempt(n, "accepted_best", 10.0 - n, 0.5), "meta": {
        "knobs": {"strategy": "iterative"}}} for n in (1, 2, 3, 4)]
    assert rule_based_step(build_trace(records, 1, 4, True), fib, Strategy()).freeze == {}


def test_rule_step_unfreezes_and_explores_when_stuck_and_exploits_when_winning(linear):
    stuck = build_trace([attempt(n, "rejected", 900.0, 1.1) for n in range(11, 21)]
                        + [failure(21, "timeout", "took 60s"), failure(22, "timeout", "took 70s")],
                        11, 22, True)
    current = Strategy(version=2, freeze={"simd": "avx512", "tile": "4x6"}, exploration=0.1)
    new = rule_based_step(stuck, linear, current)
    assert new.freeze == {} and new.widen == ["simd", "tile"]
    assert new.exploration == pytest.approx(0.35)
    assert new.directions_drop == ["timeout: took ns (2 failures)"]
    assert "no accept: unfreeze simd, tile" in new.why
    again = rule_based_step(stuck, linear, new.model_copy(update={"exploration": 0.4}))
    assert again.exploration == 0.5  # capped
    winning = build_trace(winners_agree_on_avx512(), 1, 6, True)
    assert rule_based_step(winning, linear, again).exploration == pytest.approx(0.4)


def test_tuner_honours_frozen_knobs_and_exploration_then_releases(exp_repo):
    exp = experiment_mod.load(exp_repo("linear", cases=["small_nobias"]))
    tuner = TunerProposer(exp, seed=3)
    tuner.apply_strategy(Strategy(freeze={"simd": "avx2", "rows": 4, "tile": "3x8"},
                                  exploration=0.5))
    seen = set()
    for i in range(12):
        p = tuner.propose("")
        knobs = p.meta["knobs"]
        assert (knobs["simd"], knobs["rows"], knobs["tile"]) == ("avx2", 4, "3x8")
        assert set(knobs) == set(exp.knobs)
        assert "simd=avx2" in p.text  # rendered with the frozen values
        seen.add(json.dumps(knobs, sort_keys=True))
        tuner.observe(p, Feedback(status="rejected", score=1000.0 - i))
    assert len(seen) == 12  # no combination proposed twice
    tuner.apply_strategy(Strategy())
    free = [tuner.propose("").meta["knobs"] for _ in range(6)]
    assert any((k["simd"], k["rows"], k["tile"]) != ("avx2", 4, "3x8") for k in free)


def test_tuner_starts_at_the_template_defaults_once(exp_repo, monkeypatch):
    """A template's DEFAULTS are the first proposal, and not proposed again; a run that
    already measured them (its warm start from earlier attempts) starts elsewhere."""
    exp = experiment_mod.load(exp_repo("linear", cases=["small_nobias"]))
    tuner = TunerProposer(exp, seed=5)
    defaults = {k: tuner.template.DEFAULTS[k] for k in exp.knobs}
    first = tuner.propose("")
    assert first.meta["knobs"] == defaults
    tuner.observe(first, Feedback(status="accepted_best", score=1.0))
    assert all(tuner.propose("").meta["knobs"] != defaults for _ in range(5))
    earlier = [{"meta": {"knobs": defaults}, "score": 1.0}]
    monkeypatch.setattr("ratchetloop.proposers.tuner.attempts", lambda root: earlier)
    resumed = TunerProposer(exp, seed=5)
    assert resumed.propose("").meta["knobs"] != defaults


def test_tuner_releases_a_freeze_whose_space_is_used_up(exp_repo):
    exp = experiment_mod.load(exp_repo("fib"))
    tuner = TunerProposer(exp)
    tuner.apply_strategy(Strategy(freeze={"strategy": "iterative"}))
    first = tuner.propose("")
    assert first.meta["knobs"] == {"strategy": "iterative"}
    tuner.observe(first, Feedback(status="accepted_best", score=5.0))
    assert tuner.propose("").meta["knobs"] != {"strategy": "iterative"}
    assert tuner.frozen == {}


def test_tuner_ignores_knobs_and_values_it_does_not_have(exp_repo):
    exp = experiment_mod.load(exp_repo("fib"))
    tuner = TunerProposer(exp)
    tuner.apply_strategy(Strategy(freeze={"strategy": "quantum", "nope": 1}))
    assert tuner.frozen == {}


def test_parse_reply_keeps_what_is_left_out_and_refuses_what_cannot_be(linear):
    current = Strategy(version=3, directions_pursue=["tiles"], exploration=0.2,
                       freeze={"simd": "avx512"})
    new = parse_reply('Sure.\n```json\n{"exploration": 0.6, "widen": ["simd"],'
                      ' "why": "stuck"}\n```', linear, current)
    assert (new.exploration, new.freeze, new.widen) == (0.6, {}, ["simd"])
    assert new.directions_pursue == ["tiles"] and new.why == "stuck"
    for text, why in [("no json here", "no JSON object"),
                      ('{"exploration": 3}', "exploration"),
                      ('{"freeze": {"warp": 1}}', "unknown knob 'warp'"),
                      ('{"freeze": {"rows": 5}}', "rows=5 is not one of"),
                      ('{"explore": 1}', "explore"),
                      ('{"proposer_mix": {"a": -1}}', "weights"),
                      ('{"exploration": 0.5,}', "none that parses")]:
        with pytest.raises(ValueError, match=why):
            parse_reply(text, linear, current)


STRATEGY_REPLY = """Here is the next strategy.

```json
{"directions_pursue": ["pack the activations for large token counts"],
 "directions_drop": ["scalar tails inside the hot loop"],
 "exploration": 0.3, "temperature": 0.7,
 "freeze": {"simd": "avx512"}, "proposer_mix": {"tuner": 0.5, "gpt-4.1-mini": 0.5},
 "why": "avx512 won every time; tails keep failing"}
```
"""


def test_model_step_through_the_openai_sdk_and_a_bad_reply_keeps_the_strategy(
        exp_repo, monkeypatch):
    folder = exp_repo("linear", cases=["small_nobias"])
    exp = experiment_mod.load(folder)
    records = winners_agree_on_avx512()
    for r in records:
        r["usage"] = {"cost_usd": 0.0}
    runs = folder / "runs"
    for r in records:
        (runs / f"{r['iteration']:04d}").mkdir(parents=True)
        (runs / f"{r['iteration']:04d}" / "attempt.json").write_text(json.dumps(r))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-outer")
    script = [Reply(text=STRATEGY_REPLY, usage={"prompt_tokens": 900, "completion_tokens": 80}),
              Reply(text="I think you should explore more."),  # no JSON: kept
              Reply(status=500), Reply(status=500)]  # the request fails: kept, recorded
    with FakeModelServer(script, default_text=None) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        model = resolve("gpt-4.1-mini", exp)
        model.retry = RetryPolicy(max_attempts=2, sleep=lambda s: None)
        tuner = TunerProposer(exp)
        outer = Outer(exp, tuner, every=3, model=model, now=lambda: "T")
        assert outer.start(7) is True
        step, usage, exchange = outer.step(6)
        bad, _, bad_exchange = outer.step(9)
        failed, _, _ = outer.step(12)
        posts = srv.posts()
    assert len(posts) == 4
    sent = json.dumps(posts[0].body)
    assert "accept_rate" in sent and "ideas_that_won" in sent and "avx512" in sent
    assert (step.result, step.version, usage.prompt_tokens) == ("new version", 2, 900)
    assert exchange is not None and exchange.strategy is not None
    v2 = outer.current
    assert v2.freeze == {"simd": "avx512"} and v2.temperature == 0.7
    assert v2.source == "model:gpt-4.1-mini" and v2.from_iteration == 7
    assert tuner.frozen == {"simd": "avx512"} and tuner.exploration == 0.3
    assert (bad.result, bad.version) == ("bad reply", 2) and "no JSON" in bad.error
    assert bad_exchange is not None and "explore more" in bad_exchange.reply
    assert (failed.result, failed.version) == ("request failed", 2)
    saved = json.loads((folder / "STRATEGY.json").read_text())
    assert [v["version"] for v in saved["versions"]] == [1, 2]
    assert [s["result"] for s in saved["steps"]] == ["new version", "bad reply",
                                                    "request failed"]
    md = (folder / "STRATEGY.md").read_text()
    assert "Version 2 (model:gpt-4.1-mini)" in md and "pack the activations" in md
    assert "sk-test-outer" not in md + json.dumps(saved)


def test_a_language_model_takes_the_temperature_and_every_prompt_renders_the_section():
    class Model:
        temperature: float | None = None

    m = Model()
    from ratchetloop.strategy import apply
    apply(m, Strategy(temperature=0.9))
    assert m.temperature == 0.9
    section = prompt_section(Strategy(version=2, directions_pursue=["tile 4x6"],
                                      directions_drop=["timeouts"], exploration=0.5))
    assert section.startswith("## Search strategy (version 2")
    assert "- tile 4x6" in section and "- timeouts" in section and "Explore" in section
    assert prompt_section(Strategy()) == ""
    for name in ("linear", "attention", "fib"):
        exp = experiment_mod.load(EXPERIMENTS / name)
        context = {"experiment": exp, "experiment_md": "x", "target_function": "f",
                   "language": "c", "naive_source": "int f;", "incumbent_source": "int f;",
                   "incumbent_score": 1.0, "seed_score": 2.0, "unit": "us",
                   "specialists": [], "memory_md": "# Memory", "last_failure": None,
                   "iteration": 3, "cases": [], "strategy_md": section}
        assert "- tile 4x6" in exp.build_prompt(context), name
        assert "Search strategy" not in exp.build_prompt({**context, "strategy_md": ""})


# --------------------------------------------------------------------------- real runs


def test_cli_run_with_outer_every_writes_commits_and_scores_versions(
        exp_repo: Callable[..., Path], state_reader: Callable[[Path], dict[str, Any]]):
    fib = exp_repo("fib", cases=["fib18"])
    repo = fib.parents[1]
    proc = run_ratchet("run", "fib", "--loop", "4", "--outer-every", "2", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((fib / "STRATEGY.json").read_text())
    versions = [v["version"] for v in saved["versions"]]
    assert versions[0] == 1 and len(versions) >= 2
    assert [s["iteration"] for s in saved["steps"]] == [2, 4]
    assert all(s["source"] == "rules" for s in saved["steps"])
    # the initial version and every step are commits of STRATEGY.md/json: git has the history
    log = git(repo, "log", "--format=%s", "--", "experiments/fib/STRATEGY.json").splitlines()
    assert len(log) == 3 and log[-1].startswith("Strategy v1 for fib")
    assert log[0].startswith(f"Strategy v{versions[-1]} for fib after iteration 4")
    shown = git(repo, "show", "HEAD:experiments/fib/STRATEGY.md")
    assert f"Version {versions[-1]} " in shown
    sc = state_reader(fib)
    rates = sc["strategies"]
    assert sum(r["attempts"] for r in rates) == 4
    assert [r["version"] for r in rates] == sorted({r["version"] for r in rates})
    assert sum(r["accepted"] for r in rates) == sc["counts"]["accepted"]
    assert "## Accept rate per strategy version" in (fib / "SCORES.md").read_text()
    from ratchetloop.seed import reset
    assert "removed STRATEGY.json" in reset(fib)  # a fresh search starts from version 1
    assert not (fib / "STRATEGY.md").exists()


def test_api_run_with_outer_every_steers_generic_prompts(tmp_path, monkeypatch):
    from generic_helpers import calc_reply, calc_value, make_repo

    from ratchetloop import Loop
    from ratchetloop.proposers.replay import ReplayProposer

    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))
    repo = make_repo(tmp_path)
    replies = [calc_reply(6, "six"), calc_reply(5, "five"), calc_reply(30, "thirty")]
    loop = Loop(target=str(repo / "calc.py"), metric=calc_value, directives="Lower cost().",
                proposer=ReplayProposer(replies), higher_is_better=False)
    result = loop.run(iterations=3, outer_every=2)
    assert result.best_metric == 5
    saved = json.loads((result.folder / "STRATEGY.json").read_text())
    assert [v["version"] for v in saved["versions"]] == [1, 2]
    assert any("six" in d for d in saved["versions"][1]["directions_pursue"])
    prompt = (result.folder / "runs" / "0003" / "prompt.md").read_text()
    assert "## Search strategy (version 2" in prompt and "six (won" in prompt
    assert "Search strategy" not in (result.folder / "runs" / "0002" / "prompt.md").read_text()


def test_run_with_an_outer_model_counts_its_usage_and_keeps_its_exchange(
        exp_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch):
    from ratchetloop.loop import Options, run_loop

    fib = exp_repo("fib", cases=["fib18"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-outer")
    reply = '```json\n{"directions_pursue": ["closed forms"], "exploration": 0.4}\n```'
    with FakeModelServer([Reply(text=reply, usage={"prompt_tokens": 700,
                                                   "completion_tokens": 30})],
                         default_text=None) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        exp = experiment_mod.load(fib)
        tuner = TunerProposer(exp)
        run_loop(exp, tuner, Options(iterations=2, drift_every=0, outer_every=2,
                                     outer_model="gpt-4.1-mini"))
        assert len(srv.posts()) == 1
    sc = json.loads((fib / "SCORES.json").read_text())
    assert (sc["usage"]["prompt_tokens"], sc["usage"]["completion_tokens"]) == (700, 30)
    assert sc["usage"]["cost_usd"] > 0  # priced, counted in the run's budget totals
    exchange = json.loads((fib / "runs" / "0002" / "outer_step.json").read_text())
    assert exchange["step"]["result"] == "new version" and "closed forms" in exchange["reply"]
    assert "accept_rate" in exchange["prompt"]
    assert tuner.exploration == 0.4
    saved = json.loads((fib / "STRATEGY.json").read_text())
    assert saved["versions"][-1]["source"] == "model:gpt-4.1-mini"


def test_the_outer_models_request_leaves_no_budget_reservation(
        exp_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch):
    """Its estimate is reserved while it is out (budget.py); left after it, it would count
    against every request of --parallel's proposal threads for the rest of the run."""
    from ratchetloop.loop import Options, run_loop

    fib = exp_repo("fib", cases=["fib18"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-outer")
    reply = '```json\n{"exploration": 0.4}\n```'
    with FakeModelServer([reply], default_text=None) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        exp = experiment_mod.load(fib)
        tuner = TunerProposer(exp)
        run_loop(exp, tuner, Options(iterations=2, drift_every=0, outer_every=2,
                                     outer_model="gpt-4.1-mini", max_cost=5.0))
        assert len(srv.posts()) == 1
    assert tuner.budget is not None and tuner.budget.reserved == {}
