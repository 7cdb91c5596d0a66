"""Several models (`--model a,b,c`): the bandit against uniform round-robin, real runs.

Fake models of known quality and price answer through the official openai SDK from fake
servers on 127.0.0.1 (tests/fakeservers.py). Each reads the incumbent from the prompt and,
with its own win probability, halves it (a 2x winner) or doubles it (a loser). The loop is
the real one in generic mode (a tiny repository whose score.py prints the value from
calc.py; a deterministic metric, judged in known-noise mode): prompts, SDK requests,
extraction, sandboxed runs, decisions, commits. Per seed, both policies start from the same
seed repository with fresh servers (same win probabilities, their own random streams).

    python benchmarks/bench_bandit.py                 # 30 iterations, 8 seeds
    python benchmarks/bench_bandit.py --iterations 40 --seeds 3

Two scenarios: three priced models (the bandit weighs accepted improvement per dollar) and
two free local ones of different latency (per second of request time). Printed: each
model's share of requests (mean over seeds), accepted winners, cost, and the halvings
(accepted improvement, log2 of seed / best) per dollar or per request-second.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # fakeservers, generic_helpers

from fakeservers import FakeModelServer, Reply  # noqa: E402
from generic_helpers import calc_reply, make_repo  # noqa: E402

from ratchetloop import experiment as experiment_mod  # noqa: E402
from ratchetloop.files import atomic_write_json  # noqa: E402
from ratchetloop.generic import session_parts  # noqa: E402
from ratchetloop.generic.contract import MetricSpec  # noqa: E402
from ratchetloop.generic.init import init_project  # noqa: E402
from ratchetloop.loop import Options, QuietReporter, run_loop  # noqa: E402
from ratchetloop.proposers.bandit import BanditProposer  # noqa: E402
from ratchetloop.proposers.registry import resolve  # noqa: E402

SEED_VALUE = 1 << 60
USAGE = {"prompt_tokens": 1000, "completion_tokens": 200, "cached_tokens": 0}
INCUMBENT = re.compile(r"Editable file: calc\.py.*?return (\d+)", re.DOTALL)


@dataclass
class Model:
    name: str
    win: float  # probability that a reply halves the incumbent
    price_in: float = 0.0  # USD per million tokens (0: a free local model)
    price_out: float = 0.0
    latency: float = 0.0  # seconds the server takes to answer

    @property
    def request_cost(self) -> float:
        return (USAGE["prompt_tokens"] * self.price_in
                + USAGE["completion_tokens"] * self.price_out) / 1e6


PRICED = [Model("strong", 0.6, 10.0, 30.0), Model("cheap", 0.3, 0.5, 1.5),
          Model("weak", 0.05, 2.0, 6.0)]
LOCAL = [Model("quick", 0.25, latency=0.02), Model("slow", 0.5, latency=0.4)]


class QualityServer(FakeModelServer):
    """Answers every chat request by reading the incumbent and halving it (win) or
    doubling it (loss), at the model's win rate, after its latency."""

    losers = itertools.count(1)  # every loser a new value, whichever server wrote it

    def __init__(self, model: Model, seed: int) -> None:
        super().__init__()
        self.model = model
        self.rng = random.Random(f"{model.name}-{seed}")
        self.mutex = threading.Lock()

    def _render(self, path: str, request: Any, reply: Reply) -> tuple[int, dict[str, str], bytes]:
        if self.model.latency:
            time.sleep(self.model.latency)  # a simulated model's thinking time
        found = INCUMBENT.search(request["messages"][0]["content"])
        value = int(found.group(1)) if found else SEED_VALUE
        with self.mutex:
            win = self.rng.random() < self.model.win
            n = next(self.losers)
        new, note = (value // 2, "halve") if win else (value * 2 + n, f"double {n}")
        return super()._render(path, request, Reply(text=calc_reply(new, note), usage=USAGE))


class RoundRobin(BanditProposer):
    """The same bookkeeping, but the arms take turns: the uniform baseline."""

    turn = 0

    def pick(self) -> int:
        self.turn += 1
        return (self.turn - 1) % len(self.arms)


def project(root: Path, models: list[Model]) -> experiment_mod.Experiment:
    repo = make_repo(root, calc=f"def cost():\n    return {SEED_VALUE}\n")
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"),
                          acceptance={"mode": "known_noise", "confirm": 0})
    contract = json.loads((folder / "experiment.json").read_text(encoding="utf-8"))
    contract["prices"] = {m.name: {"input": m.price_in, "output": m.price_out}
                          for m in models if m.price_in or m.price_out}
    atomic_write_json(folder / "experiment.json", contract)
    return experiment_mod.load(folder)


def one_run(root: Path, models: list[Model], policy: str, seed: int,
            iterations: int) -> dict[str, Any]:
    os.environ["RATCHET_BENCH_LOCK"] = str(root / "bench.lock")  # deterministic metric:
    exp = project(root, models)  # no need to queue behind other benchmarks on this host
    servers = [QualityServer(m, seed) for m in models]
    for srv in servers:
        srv.__enter__()
    try:
        arms = [resolve(f"openai-compatible:{m.name}@{srv.openai_base_url}", exp)
                for m, srv in zip(models, servers, strict=True)]
        cls = BanditProposer if policy == "bandit" else RoundRobin
        proposer = cls(arms, seed=seed)
        reporter, workspace = session_parts(exp, QuietReporter())
        # not pipelined: every prompt shows the latest incumbent, so a model's win rate is
        # its quality, not also the luck of when its request went out
        summary = run_loop(exp, proposer, Options(iterations=iterations, drift_every=0,
                                                  pipeline=False), reporter, workspace)
    finally:
        for srv in servers:
            srv.close()
    best = summary.best.score if summary.best else SEED_VALUE
    arms_out = {a.proposer.name.split(":", 1)[1]: a for a in proposer.arms}
    return {
        "requests": {n: a.requests for n, a in arms_out.items()},
        "accepted": {n: a.accepted for n, a in arms_out.items()},
        "cost": sum(a.usage.cost_usd or 0.0 for a in arms_out.values()),
        "seconds": sum(a.seconds for a in arms_out.values()),
        "halvings": math.log2(SEED_VALUE / best),
    }


def scenario(title: str, models: list[Model], iterations: int, seeds: int) -> None:
    priced = any(m.price_in for m in models)
    print(f"\n### {title}: {iterations} iterations x {seeds} seeds\n")
    for m in models:
        what = (f"${m.request_cost:.4f} a request" if priced else f"{m.latency:.2f} s a request")
        print(f"- {m.name}: wins {m.win:.0%} of its requests, {what}")
    per = "$" if priced else "request-second"
    head = " | ".join(f"{m.name} share" for m in models)
    print(f"\n| policy | {head} | winners | halvings | {'cost' if priced else 'request s'}"
          f" | halvings per {per} | wall s |")
    print("|---|" + "---|" * (len(models) + 5))
    for policy in ("round-robin", "bandit"):
        runs = []
        for seed in range(seeds):
            with tempfile.TemporaryDirectory(prefix="bench-bandit-") as tmp:
                started = time.monotonic()
                out = one_run(Path(tmp), models, policy, seed, iterations)
                out["wall"] = time.monotonic() - started
                runs.append(out)
        shares = [statistics.mean(r["requests"][m.name] / sum(r["requests"].values())
                                  for r in runs) for m in models]
        spend = statistics.mean(r["cost"] if priced else r["seconds"] for r in runs)
        halvings = statistics.mean(r["halvings"] for r in runs)
        winners = statistics.mean(sum(r["accepted"].values()) for r in runs)
        rate = statistics.mean(r["halvings"] / (r["cost"] if priced else r["seconds"])
                               for r in runs)
        cells = " | ".join(f"{s:.0%}" for s in shares)
        spent = f"${spend:.4f}" if priced else f"{spend:.2f}"
        print(f"| {policy} | {cells} | {winners:.1f} | {halvings:.1f} | {spent} | {rate:.1f} |"
              f" {statistics.mean(r['wall'] for r in runs):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args()
    scenario("Priced models (per dollar)", PRICED, args.iterations, args.seeds)
    scenario("Free local models (per request-second)", LOCAL, args.iterations, args.seeds)


if __name__ == "__main__":
    main()
