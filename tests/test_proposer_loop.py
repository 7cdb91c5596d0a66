"""Whole loop through a real SDK backend: the fake OpenAI-compatible server answers with
real C for the linear experiment; usage lands in SCORES.json; the key is in no written file
and never reaches the sandboxed candidate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import git
from fakeservers import FakeModelServer, Reply

from ratchetloop import experiment as experiment_mod
from ratchetloop.loop import Options, run_loop
from ratchetloop.proposers.registry import resolve
from ratchetloop.proposers.retry import RetryPolicy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]

CANARY = "sk-LOOPCANARY-5a4b3c2d1e0f"

PLAIN = """#include <stddef.h>

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int T, int C, int OC) {
    for (int bt = 0; bt < B * T; bt++) {
        for (int o = 0; o < OC; o++) {
            float v = bias ? bias[o] : 0.0f;
            for (int i = 0; i < C; i++) v += inp[(size_t)bt * C + i] * weight[(size_t)o * C + i];
            out[(size_t)bt * OC + o] = v;
        }
    }
}
"""

# Hostile: tries to read the key from its environment and smuggle it out via stderr.
SNOOP = """#include <stdio.h>
#include <stdlib.h>

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int T, int C, int OC) {
    const char* k = getenv("OPENAI_API_KEY");
    fprintf(stderr, "KEY=%s\\n", k ? k : "(none)");
    for (int bt = 0; bt < B * T; bt++)
        for (int o = 0; o < OC; o++) {
            float v = bias ? bias[o] : 0.0f;
            for (int i = 0; i < C; i++) v += inp[bt * C + i] * weight[o * C + i];
            out[bt * OC + o] = v;
        }
}
"""


def reply(source: str, note: str) -> str:
    return f"Here is my attempt.\n\n```c\n{source.strip()}\n```\nNote: {note}\n"


def all_text(root: Path) -> str:
    """Every file under root (state, runs/, winners/), plus the whole git history."""
    chunks = [
        p.read_bytes().decode(errors="replace")
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    ]
    chunks.append(git(root, "log", "-p", "--all"))
    return "\n".join(chunks)


def test_loop_with_openai_backend_records_usage_and_never_writes_the_key(exp_repo, monkeypatch):
    folder = exp_repo("linear", cases=["small_nobias"])
    repo = folder.parents[1]
    usage = {"prompt_tokens": 1200, "completion_tokens": 300, "cached_tokens": 1024}
    script = [
        Reply(status=503),  # retried, then answered
        Reply(text=reply(SNOOP, "reads the environment"), usage=usage),
        Reply(body="{not json"),  # malformed: a recorded failure, the run goes on
    ]
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with FakeModelServer(script, default_text=None) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        exp = experiment_mod.load(folder)
        proposer = resolve("gpt-4.1-mini", exp, temperature=0.4)
        proposer.retry = RetryPolicy(max_attempts=2, sleep=lambda s: None)
        summary = run_loop(exp, proposer, Options(iterations=2, drift_every=0))
        assert [o.status for o in summary.outcomes][1] == "failed"
        assert summary.outcomes[1].failure_kind == "malformed_response"
        posts = srv.posts()
    assert len(posts) == 3
    assert all(p.headers.get("authorization") == f"Bearer {CANARY}" for p in posts)
    sc = json.loads((folder / "SCORES.json").read_text())
    total = json.dumps(sc)
    assert "1200" in total or "2400" in total  # usage reached the scoreboard
    u = sc["usage"]
    md = (folder / "SCORES.md").read_text()  # and its rendering, with the cost
    assert f"cumulative usage: {u['prompt_tokens'] + u['completion_tokens']} total tokens" in md
    assert f"cached prompt {u['cached_prompt_tokens']}" in md and u["cached_prompt_tokens"] > 0
    assert "estimated cost $" in md or "estimated cost unknown" in md
    request = json.loads((folder / "runs" / "0001" / "request.json").read_text())
    assert request["model"] == "gpt-4.1-mini" and request["temperature"] == 0.4
    assert "matmul_forward" in (folder / "runs" / "0001" / "response.txt").read_text()
    assert "{not json" in (folder / "runs" / "0002" / "response.txt").read_text()
    text = all_text(repo)
    # the snooping candidate was stopped by the experiment's security rules, or it ran and
    # found no key in its environment; either way it is recorded
    assert summary.outcomes[0].failure_kind == "security" or "KEY=(none)" in text
    assert "reads the environment" in text
    assert CANARY not in text


def test_ratchet_run_with_openai_compatible_server(exp_repo):
    """`ratchet run linear --model openai-compatible:fake@<url>` as a real subprocess."""
    from conftest import run_ratchet

    folder = exp_repo("linear", cases=["small_nobias"])
    with FakeModelServer([reply(PLAIN, "plain loop")], default_text=None) as srv:
        model = f"openai-compatible:fake@{srv.openai_base_url}"
        proc = run_ratchet(
            "run",
            str(folder),
            "--model",
            model,
            "--loop",
            "1",
            cwd=folder.parents[1],
            env={"OPENAI_COMPATIBLE_API_KEY": CANARY, "OPENAI_API_KEY": "sk-not-for-local"},
        )
        posts = srv.posts()
    assert proc.returncode == 0, proc.stderr
    assert [p.body["model"] for p in posts] == ["fake"]
    assert posts[0].headers.get("authorization") == f"Bearer {CANARY}"  # not the OpenAI key
    assert (folder / "runs" / "0001" / "response.txt").is_file()
    sc = json.loads((folder / "SCORES.json").read_text())
    assert sc["counts"]["attempts"] == 1
    assert sc["usage"]["cost_usd"] == 0.0  # a local server costs nothing unless overridden
    assert CANARY not in all_text(folder.parents[1]) + proc.stdout + proc.stderr
