"""Per-case specialists: a candidate that loses overall but wins one case is kept for it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import reply, slow_fib

from ratchetloop import experiment as experiment_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.replay import ReplayProposer

# Fast when n == 18, twice as slow as the incumbent below for every other n.
SPECIALIST = """def fib(n):
    if n != 18:
        for _ in range(8000):
            pass
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
"""


def test_case_specialist_is_kept_shown_and_survives_a_new_best(exp_repo) -> None:
    folder = exp_repo("fib")
    exp = experiment_mod.load(folder)
    proposer = ReplayProposer([
        reply(slow_fib(4000), "burn 4000 steps"),    # best: beats the naive seed everywhere
        reply(SPECIALIST, "shortcut for n == 18"),    # worse overall, far better on fib18
        reply(slow_fib(1000), "burn 1000 steps"),    # new best, still slower than it on fib18
        reply(slow_fib(1000) + "\n", "same again"),  # lets us read the prompt after that
    ])
    summary = run_loop(exp, proposer, Options(iterations=4, drift_every=0))
    statuses = [o.status for o in summary.outcomes]
    assert statuses[:3] == ["accepted_best", "accepted_nonbest", "accepted_best"], statuses
    specialist_sha = summary.outcomes[1].commit
    assert summary.outcomes[1].cases_won == ["fib18"]

    scores = json.loads((folder / "SCORES.json").read_text())
    assert scores["specialists"] == {"fib18": specialist_sha}
    assert scores["best_commit"] == summary.outcomes[2].commit
    md = (folder / "SCORES.md").read_text()
    assert "best fib18 specialist" in md and "accepted nonbest (fib18)" in md
    assert (folder / "winners" / specialist_sha / "candidate.py").read_text() == SPECIALIST

    # the model is shown the specialist as well as the overall best
    last_prompt = proposer.prompts[-1]
    assert "n != 18" in last_prompt and "fib18" in last_prompt
    # and the next candidate was timed against it too
    request = json.loads(Path(folder / "runs" / "0003" / "decision.json").read_text())
    assert "fib18" in request["per_case"]
