"""The loop on the C linear experiment (real gcc): compile errors grouped by signature,
wrong results rejected by the adversarial validation, caching candidates refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import reply

from ratchetloop import experiment as experiment_mod
from ratchetloop import memory as memory_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.replay import ReplayProposer

HEAD = ("void matmul_forward(float* out, const float* inp, const float* weight,"
        " const float* bias, int B, int T, int C, int OC) {\n")
LOOP = """    for (int bt = 0; bt < B * T; bt++) {
        for (int o = 0; o < OC; o++) {
            float val = bias ? bias[o] : 0.0f;
            for (int i = 0; i < C; i++) val += inp[(long)bt * C + i] * weight[(long)o * C + i];
            out[(long)bt * OC + o] = val%s;
        }
    }
"""


def c_reply(body: str, note: str) -> str:
    return reply(HEAD + body + "}\n", note, lang="c")


@pytest.fixture
def linear(exp_repo) -> Path:
    return exp_repo("linear", cases=["small_nobias", "attnproj_bt4"])


def run(folder: Path, replies: list[str]):
    exp = experiment_mod.load(folder)
    return run_loop(exp, ReplayProposer(replies),
                    Options(iterations=len(replies), drift_every=0))


@pytest.mark.slow
def test_compile_error_wrong_result_and_cache_are_rejected(linear: Path) -> None:
    summary = run(linear, [
        c_reply("    undeclared_thing = 1;\n" + LOOP % "", "typo one"),
        c_reply("    another_undeclared = 2;\n" + LOOP % "", "typo two"),
        c_reply(LOOP % " * 1.5f", "scaled"),
        c_reply("    static int done = 0;\n    if (done) return;\n    done = 1;\n" + LOOP % "",
                "compute once, reuse the output"),
    ])
    o = summary.outcomes
    assert [x.status for x in o] == ["failed"] * 4, [(x.failure_kind, x.message) for x in o]
    assert o[0].failure_kind == o[1].failure_kind == "build_error"
    assert (o[2].failure_kind, o[2].message.split(":")[0]) == ("validation_error",
                                                               "wrong_result"), o[2]
    # state kept in a static is refused before it compiles (and by the object check after)
    assert o[3].failure_kind == "security" and "`static` variables" in o[3].message, o[3]
    mem = memory_mod.load(linear)
    builds = [g for g in mem.failing.values() if g.kind == "build_error"]
    assert len(builds) == 1 and builds[0].count == 2, mem.failing  # one signature, names gone
    assert "undeclared" in builds[0].signature
    assert (linear / "runs" / "0001" / "attempt.json").is_file()
    sc = json.loads((linear / "SCORES.json").read_text())
    assert sc["rows"] == [] and sc["counts"]["failed"] == 4
