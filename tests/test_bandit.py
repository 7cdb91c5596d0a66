"""Several models (`--model a,b,c`): the bandit's choice rule, its bookkeeping, and whole
runs through the official openai SDK against two fake servers of different quality."""

from __future__ import annotations

import json
import math
import random
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fakeservers import FakeModelServer
from generic_helpers import calc_reply, git, make_repo

from ratchetloop.api import Loop
from ratchetloop.budget import attach_budget
from ratchetloop.cli import main
from ratchetloop.errors import RatchetError
from ratchetloop.generic.contract import MetricSpec
from ratchetloop.generic.init import init_project
from ratchetloop.proposers.bandit import (
    Arm,
    BanditProposer,
    Result,
    choose,
    costs,
    gain,
    gains,
    unit,
)
from ratchetloop.proposers.base import Feedback, Proposal, ProposalFailed, Usage
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.scores import Scores


def arm(name: str, gains: list[float], cost: float | None = 0.01,
        seconds: float = 1.0) -> Arm:
    a = Arm(ReplayProposer([], name=name), requests=len(gains))
    a.results = [Result(g, cost, seconds) for g in gains]
    return a


def accepted(ratio: float, lower: bool = True) -> Feedback:
    return Feedback("accepted_best", score=1.0, lower_is_better=lower, meta={"ratio": ratio})


# ------------------------------------------------------------------ the choice rule


def test_every_arm_is_tried_first_in_order() -> None:
    arms = [arm("a", [5.0]), arm("b", []), arm("c", [])]
    assert choose(arms, random.Random(0)) == 1
    arms[1].requests = 1  # chosen, not yet answered: still counts as tried
    assert choose(arms, random.Random(0)) == 2


def test_thompson_draws_favour_the_arm_that_wins_and_are_reproducible() -> None:
    good, bad = arm("good", [0.7, 0.7, 0.0, 0.5, 0.7, 0.6]), arm("bad", [0.0, 0.0, 0.0])
    picks = [choose([good, bad], rng) for rng in [random.Random(7)] for _ in range(400)]
    assert picks.count(0) / len(picks) > 0.9
    again = [choose([good, bad], rng) for rng in [random.Random(7)] for _ in range(400)]
    assert again == picks  # a seeded generator: the same feedback, the same choices


def test_a_much_cheaper_model_is_preferred_before_it_has_won() -> None:
    dear = arm("dear", [0.7, 0.7, 0.0], cost=0.10)
    cheap = arm("cheap", [0.0], cost=0.001)  # one try, no win, a hundredth of the price
    picks = [choose([dear, cheap], rng) for rng in [random.Random(1)] for _ in range(200)]
    assert picks.count(1) / len(picks) > 0.9
    # the same two per second of request time, equally fast: the winner is preferred
    dear_s, cheap_s = arm("dear", [0.7, 0.7, 0.0], None), arm("cheap", [0.0], None)
    picks = [choose([dear_s, cheap_s], rng) for rng in [random.Random(1)] for _ in range(200)]
    assert picks.count(0) / len(picks) > 0.6


def test_cost_is_per_dollar_while_every_request_is_priced_else_per_second() -> None:
    dear, cheap = arm("dear", [0.0, 0.0], cost=0.1, seconds=2.0), arm("cheap", [0.0], 0.01)
    assert unit([dear, cheap]) == "usd"
    assert costs([dear, cheap], "usd") == pytest.approx([0.1, 0.01])
    local = arm("local", [0.0], cost=0.0, seconds=4.0)  # free: time is the common cost
    assert unit([dear, cheap, local]) == "s"
    # seconds: the median of an arm's timings and one at the median of all (2.0 here)
    assert costs([dear, cheap, local], "s") == pytest.approx([2.0, 1.5, 3.0])
    cold = arm("cold", [0.0, 0.0, 0.0], None)
    cold.results[0].seconds = 30.0  # a first connection, or one slow reply: the median
    assert costs([cold], "s") == [1.0]
    unpriced = arm("unpriced", [0.0], cost=None)
    assert unit([dear, unpriced]) == "s"
    fresh = Arm(ReplayProposer([], name="fresh"), requests=1)  # chosen, not yet judged
    assert costs([dear, cheap, fresh], "usd") == pytest.approx([0.1, 0.01, 0.07])
    zero = arm("instant", [0.0], cost=None, seconds=0.0)
    assert costs([zero], "s") == [1e-3]  # a request timed at 0 s does not look free


def test_gains_are_shrunk_towards_the_mean_win_of_all_arms() -> None:
    a, b, c = arm("a", [2.0, 0.0, 1.0]), arm("b", [0.0]), arm("c", [0.5])
    # the mean win is 3.5 / 3: each arm's wins plus one pseudo-win at that mean
    m = 3.5 / 3
    assert gains([a, b, c]) == pytest.approx([(3 + m) / 3, m, (0.5 + m) / 2])
    assert gains([arm("x", [0.0])]) == [1.0]  # nobody has won: only ratios matter


def test_gain_is_the_log_of_the_improvement_only_for_accepted_proposals() -> None:
    assert gain(accepted(0.5), None) == pytest.approx(0.6931, abs=1e-4)  # 2x faster
    assert gain(accepted(2.0, lower=False), None) == pytest.approx(0.6931, abs=1e-4)
    assert gain(Feedback("rejected", score=0.1, meta={"ratio": 0.5}), None) == 0.0
    assert gain(Feedback("failed"), None) == 0.0
    # no ratio from the caller: the best this bandit saw accepted before
    assert gain(Feedback("accepted_best", score=25.0), 100.0) == pytest.approx(1.3863, abs=1e-4)
    assert gain(Feedback("accepted_best", score=25.0), None) == 1.0  # size unknown


# ------------------------------------------------------------------ the proposer


def priced(name: str, cost: float, n: int = 100) -> ReplayProposer:
    return ReplayProposer([{"text": f"{name} {k}", "usage": {"prompt_tokens": 10,
                                                            "cost_usd": cost}}
                           for k in range(n)], name=name)


def play(bandit: BanditProposer, rounds: int, ratio_of: dict[str, float | None]) -> list[str]:
    """Ask and tell `rounds` times; an arm's proposals are accepted with its ratio
    (None: rejected). Returns who answered each request."""
    who = []
    for _ in range(rounds):
        p = bandit.propose("prompt")
        ratio = ratio_of[p.model]
        fb = accepted(ratio) if ratio else Feedback("rejected", score=2.0)
        bandit.observe(p, fb)
        who.append(p.model)
    return who


def test_the_cheaper_of_two_equally_good_models_gets_most_requests() -> None:
    bandit = BanditProposer([priced("dear", 0.10), priced("cheap", 0.01)], seed=3)
    who = play(bandit, 60, {"dear": 0.9, "cheap": 0.9})
    assert who[:2] == ["dear", "cheap"]  # each tried once first
    assert who.count("cheap") >= 45
    assert bandit.shares()["cheap"] == who.count("cheap") / 60


def test_a_model_that_never_wins_gets_few_requests_and_same_seed_same_choices() -> None:
    def run() -> list[str]:
        bandit = BanditProposer([priced("bad", 0.01), priced("good", 0.01)], seed=11)
        return play(bandit, 40, {"bad": None, "good": 0.95})
    who = run()
    assert who.count("good") >= 32
    assert run() == who


def test_proposal_names_its_arm_and_the_arm_hears_its_feedback() -> None:
    a, b = ReplayProposer(["x"], name="same"), ReplayProposer(["y"], name="other")
    bandit = BanditProposer([a, b])
    p = bandit.propose("prompt")
    assert p.model == "same" and p.meta["bandit_request"] == 1
    bandit.observe(p, accepted(0.5))
    assert a.feedback and a.feedback[0].status == "accepted_best" and not b.feedback
    bandit.observe(p, accepted(0.5))  # told twice: counted once
    assert bandit.arms[0].accepted == 1 and len(bandit.arms[0].results) == 1


def test_names_must_be_distinct_and_at_least_two() -> None:
    with pytest.raises(RatchetError, match="twice"):
        BanditProposer([ReplayProposer([], name="m"), ReplayProposer([], name="m")])
    with pytest.raises(RatchetError, match="at least two"):
        BanditProposer([ReplayProposer([], name="m")])


def test_the_run_budget_reaches_every_arm() -> None:
    a, b = priced("a", 0.4, 5), priced("b", 0.4, 5)
    bandit = BanditProposer([a, b])
    budget = attach_budget(bandit, max_cost=1.0)
    assert a.budget is budget and b.budget is budget and bandit.budget is budget
    spent = []
    with pytest.raises(ProposalFailed, match="cost budget") as info:
        for _ in range(5):
            p = bandit.propose("prompt")
            budget.record(p.usage)
            spent.append(p.model)
    assert spent == ["a", "b"]  # 0.8 spent; a third request of 0.4 would cross 1.0
    assert info.value.kind == "budget"
    assert sum(arm.failed for arm in bandit.arms) == 0  # refused, never sent: not a failure


class Failing(ReplayProposer):
    def propose(self, prompt: str) -> Proposal:
        raise ProposalFailed("down: http 500", "http_500", usage=Usage(prompt_tokens=3,
                                                                       cost_usd=0.0))


def test_a_failed_request_is_a_zero_reward_named_after_its_arm() -> None:
    bandit = BanditProposer([Failing([], name="flaky"), priced("ok", 0.01)])
    with pytest.raises(ProposalFailed) as info:
        bandit.propose("prompt")
    assert getattr(info.value, "model", None) == "flaky"
    flaky = bandit.arms[0]
    assert (flaky.requests, flaky.failed, flaky.usage.prompt_tokens) == (1, 1, 3)
    assert flaky.results[0].gain == 0.0 and flaky.wins == 0


def test_a_fix_goes_to_the_arm_that_wrote_the_proposal_and_adds_to_its_cost() -> None:
    bandit = BanditProposer([priced("a", 0.05), priced("b", 0.02)])
    first, second = bandit.propose("p"), bandit.propose("p")
    assert (first.model, second.model) == ("a", "b")
    fix = bandit.follow_up("fix it", second)
    assert fix.model == "b"
    pending = bandit.pending[second.meta["bandit_request"]]
    assert pending.cost_usd == pytest.approx(0.04)
    assert bandit.arms[1].requests == 1  # a fix is not a new request
    bandit.observe(second, accepted(0.5))
    result = bandit.arms[1].results[0]
    assert (result.gain, result.cost_usd) == (pytest.approx(math.log(2)), pytest.approx(0.04))
    bandit.observe(first, Feedback("rejected"))
    unknown = bandit.follow_up("fix", None)  # nothing to go by: the best arm
    assert unknown.model == "b"


def test_answers_follow_ups_only_when_every_arm_does() -> None:
    class NoFollowUps(ReplayProposer):
        answers_follow_ups = False

    assert BanditProposer([priced("a", 0.0), priced("b", 0.0)]).answers_follow_ups
    assert not BanditProposer([priced("a", 0.0), NoFollowUps([], name="t")]).answers_follow_ups


def test_propose_and_observe_from_many_threads_lose_nothing() -> None:
    n = 200
    a = ReplayProposer([{"text": "a", "usage": {"cost_usd": 0.01}}] * n, name="a")
    b = ReplayProposer([{"text": "b", "usage": {"cost_usd": 0.01}}] * n, name="b")
    bandit = BanditProposer([a, b])  # replay arms are not parallel_safe: each gets a gate
    proposals: list[Proposal] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(n // 8):
            p = bandit.propose("prompt")
            with lock:
                proposals.append(p)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(proposals) == n
    assert len({p.meta["bandit_request"] for p in proposals}) == n
    assert sum(arm.requests for arm in bandit.arms) == n
    assert len(a.replies) + len(b.replies) == n  # each scripted reply given exactly once
    done = threading.Thread(target=lambda: [bandit.observe(p, Feedback("rejected"))
                                            for p in proposals[::2]])
    done.start()
    for p in proposals[1::2]:
        bandit.observe(p, Feedback("rejected"))
    done.join()
    assert not bandit.pending
    assert sum(len(arm.results) for arm in bandit.arms) == n


# ------------------------------------------------------------------ SCORES


def test_scores_count_each_model_and_render_the_table_only_for_several() -> None:
    sc = Scores(experiment="e", unit="us", direction="lower_is_better")
    sc.count_model("good", "accepted_best", Usage(10, 5, cost_usd=0.5))
    sc.count_model("good", "rejected", Usage(10, 5, cost_usd=0.5))
    assert "## Models" not in sc.render()  # one model: the usual scoreboard, unchanged
    sc.count_model("bad", "failed", Usage(1, 1, cost_usd=None))
    sc.count_model("good", "", Usage(1, 1, cost_usd=0.25), fix=True)
    md = sc.render()
    assert "## Models" in md
    assert "| good | 2 | 1 | 50% | 1 | 32 | $1.250000 |" in md
    assert "| bad | 1 | 0 | 0% | 0 | 2 | unknown |" in md
    again = Scores.model_validate_json(sc.model_dump_json())
    assert again.models == sc.models
    old = json.loads(sc.model_dump_json())
    del old["models"]  # a SCORES.json from before this table still loads
    assert Scores.model_validate(old).models == {}


def test_registry_makes_a_bandit_from_a_comma_separated_list(tmp_path: Path) -> None:
    from ratchetloop.proposers.registry import resolve

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("[]")
    b.write_text("[]")
    exp = SimpleNamespace(prices={})  # all resolve reads of an experiment for these
    bandit = resolve(f"replay:{a}, replay:{b}", exp)  # type: ignore[arg-type]
    assert isinstance(bandit, BanditProposer)
    assert bandit.name == "replay:a.json,replay:b.json"
    with pytest.raises(RatchetError, match="empty name"):
        resolve(f"replay:{a},", exp)  # type: ignore[arg-type]
    with pytest.raises(RatchetError, match="twice"):
        resolve(f"replay:{a},replay:{a}", exp)  # type: ignore[arg-type]


# ------------------------------------------------------------------ whole runs

SEED = 1 << 40


@pytest.fixture
def calc_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user repository whose score.py prints the constant calc.py returns; deterministic,
    so one run per candidate decides (known-noise mode) and no host-wide lock is needed."""
    monkeypatch.setenv("RATCHET_BENCH_LOCK", str(tmp_path / "bench.lock"))
    return make_repo(tmp_path, calc=f"def cost():\n    return {SEED}\n")


def model_list(*servers: tuple[str, FakeModelServer]) -> str:
    return ",".join(f"openai-compatible:{name}@{srv.openai_base_url}" for name, srv in servers)


def test_two_servers_thirty_iterations_the_better_gets_most_requests(calc_repo: Path) -> None:
    good = [calc_reply(SEED >> k, f"halve {k}") for k in range(1, 31)]  # each a 2x winner
    bad = [calc_reply(SEED * 2 + k, f"worse {k}") for k in range(1, 31)]  # each a loser
    with FakeModelServer(good, default_text=None) as g, \
            FakeModelServer(bad, default_text=None) as b:
        result = Loop(target=str(calc_repo / "calc.py"), metric="python3 score.py",
                      metric_regex=r"cost=(\d+)", higher_is_better=False,
                      readonly=["score.py"], tag="calc",
                      acceptance={"mode": "known_noise", "confirm": 0},
                      proposer=model_list(("good", g), ("bad", b)).split(",")).run(30)
        to_good, to_bad = len(g.posts()), len(b.posts())
    assert to_good + to_bad == 30 and to_bad >= 1  # every arm tried; no fix requests
    assert to_good >= 21, (to_good, to_bad)  # >= 70% to the better one
    assert result.best_metric == SEED >> to_good  # every good answer was a winner
    scores = json.loads((result.folder / "SCORES.json").read_text())
    models = scores["models"]
    assert models["openai-compatible:good"]["requests"] == to_good
    assert models["openai-compatible:good"]["accepted"] == to_good
    assert models["openai-compatible:bad"] == {**models["openai-compatible:bad"],
                                               "requests": to_bad, "accepted": 0}
    md = (result.folder / "SCORES.md").read_text()
    assert f"| openai-compatible:good | {to_good} | {to_good} | 100% | 0 |" in md
    assert f"| openai-compatible:bad | {to_bad} | 0 | 0% | 0 |" in md
    log = git(calc_repo, "log", "--format=%s", "ratchet/calc")
    assert log.count("from openai-compatible:good at") == to_good  # commits name the arm


def test_max_cost_holds_both_models_from_the_cli(calc_repo: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = init_project(calc_repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"),
                          acceptance={"mode": "known_noise", "confirm": 0})
    contract = json.loads((folder / "experiment.json").read_text())
    # 20 completion tokens a reply (the fake servers' usage, and --max-output-tokens 20, so
    # every estimate is exact): good costs $0.01 a request, dear $0.04
    contract["prices"] = {"good": {"input": 0.0, "output": 500.0},
                          "claude-dear": {"input": 0.0, "output": 2000.0}}
    (folder / "experiment.json").write_text(json.dumps(contract))
    good = [calc_reply(SEED >> k, f"halve {k}") for k in range(1, 11)]
    dear = [calc_reply(SEED * 2 + k, f"worse {k}") for k in range(1, 11)]
    with FakeModelServer(good, default_text=None) as g, \
            FakeModelServer(dear, default_text=None) as d:
        # two SDKs in one bandit: openai for one model, anthropic for the other
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", d.anthropic_base_url)
        out = CliRunner().invoke(main, [
            "run", str(folder), "--model", f"{model_list(('good', g))},claude-dear",
            "--loop", "10", "--max-cost", "0.1", "--max-output-tokens", "20"])
        sent = {"good": len(g.posts()), "dear": len(d.posts())}
        assert all(p.path == "/v1/messages" for p in d.posts())
    assert out.exit_code == 0, out.output
    assert sent["good"] >= 1 and sent["dear"] >= 1 and sum(sent.values()) < 10
    spent = json.loads((folder / "SCORES.json").read_text())["usage"]["cost_usd"]
    assert spent == pytest.approx(0.01 * sent["good"] + 0.04 * sent["dear"])
    assert spent <= 0.1 < spent + 0.04  # stopped when the dearer model's request won't fit
    # the refusal is the arm's own pre-request check, naming it: each arm holds the budget
    text = " ".join(out.output.split())
    assert "cost budget $0.1000 would be exceeded" in text and "for claude-dear" in text


def test_a_fix_request_goes_back_to_the_model_whose_candidate_crashed(calc_repo: Path) -> None:
    broken = "File: calc.py\n```python\ndef cost():\n    return undefined_name\n```\nNote: idea\n"
    with FakeModelServer([broken, calc_reply(SEED >> 1, "fixed")], default_text=None) as a, \
            FakeModelServer([calc_reply(SEED >> 2, "quarter")], default_text=None) as b:
        result = Loop(target=str(calc_repo / "calc.py"), metric="python3 score.py",
                      metric_regex=r"cost=(\d+)", higher_is_better=False, tag="calc",
                      acceptance={"mode": "known_noise", "confirm": 0},
                      proposer=model_list(("a", a), ("b", b))).run(2, pipeline=False)
        asked_a = [p.body["messages"][0]["content"] for p in a.posts()]
        asked_b = [p.body["messages"][0]["content"] for p in b.posts()]
    assert len(asked_a) == 2 and len(asked_b) == 1
    assert "undefined_name" in asked_a[1]  # the fix prompt, with the crash, went to a
    assert "undefined_name" not in asked_b[0]
    assert result.best_metric == SEED >> 2
    models = json.loads((result.folder / "SCORES.json").read_text())["models"]
    a_stats, b_stats = models["openai-compatible:a"], models["openai-compatible:b"]
    assert (a_stats["requests"], a_stats["fixes"], a_stats["accepted"]) == (1, 1, 1)
    assert (b_stats["requests"], b_stats["fixes"], b_stats["accepted"]) == (1, 0, 1)
    assert a_stats["usage"]["prompt_tokens"] == 200  # its proposal and its fix (100 each)
