"""Whole loop through a real SDK backend: the fake OpenAI-compatible server answers with
real code; usage lands in SCORES.json; the key is in no written file and never reaches the
sandboxed candidate (a C snooper is stopped by security.py before it compiles; a Python one
that security.py lets through runs and finds no key in its environment)."""

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

pytestmark = pytest.mark.slow
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

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

# Hostile: tries to read the key from its environment and smuggle it out via stderr;
# security.py refuses getenv, stdio and fprintf, so it never compiles.
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


# Hostile and past security.py (no banned module, call or dunder): reads the worker's whole
# environment at import time. Its answers say what it saw: -1 if the key or its variable is
# there, -2 if the environment could not be read (the driver always sets OMP_NUM_THREADS),
# else a correct iterative fib, thousands of times faster than the seed.
PY_SNOOP = """import posix

_SEEN = b" ".join(k + b"=" + v for k, v in posix.environ.items())
_VERDICT = -1 if b"LOOPCANARY" in _SEEN or b"API_KEY" in _SEEN else (
    0 if b"OMP_NUM_THREADS=" in _SEEN else -2)


def fib(n):
    if _VERDICT:
        return _VERDICT
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
"""


def reply(source: str, note: str, lang: str = "c") -> str:
    return f"Here is my attempt.\n\n```{lang}\n{source.strip()}\n```\nNote: {note}\n"


def all_text(root: Path) -> str:
    """Every file under root (state, runs/, winners/), plus the whole git history."""
    chunks = [
        p.read_bytes().decode(errors="replace")
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts
    ]
    chunks.append(git(root, "log", "-p", "--all"))
    return "\n".join(chunks)


@needs_gcc
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
    u = sc["usage"]  # the one answered request's usage; the 503 and the bad body add none
    assert (u["prompt_tokens"], u["completion_tokens"], u["cached_prompt_tokens"]) == (
        1200, 300, 1024)
    md = (folder / "SCORES.md").read_text()  # and its rendering, with the cost
    assert ("- cumulative usage: 1500 total tokens (prompt 1200, completion 300, cached prompt"
            f" 1024), estimated cost ${u['cost_usd']:.6f}\n") in md
    assert u["cost_usd"] > 0  # gpt-4.1-mini is in the price table
    request = json.loads((folder / "runs" / "0001" / "request.json").read_text())
    assert request["model"] == "gpt-4.1-mini" and request["temperature"] == 0.4
    assert "matmul_forward" in (folder / "runs" / "0001" / "response.txt").read_text()
    assert "{not json" in (folder / "runs" / "0002" / "response.txt").read_text()
    # the C snooper never got past security.py: recorded, never compiled or run
    first = summary.outcomes[0]
    assert (first.status, first.failure_kind) == ("failed", "security")
    assert "`getenv` is not allowed" in first.message
    verdict = json.loads((folder / "runs" / "0001" / "security.json").read_text())
    assert verdict["ok"] is False
    assert not (folder / "runs" / "0001" / "result.json").exists()
    text = all_text(repo)
    assert "reads the environment" in text
    assert CANARY not in text


def test_a_candidate_past_security_reads_its_environment_and_finds_no_key(
        exp_repo, monkeypatch) -> None:
    folder = exp_repo("fib", cases=["fib18"])
    exp = experiment_mod.load(folder)
    assert exp.security_check()(PY_SNOOP) == []  # it really is past the first filter
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    with FakeModelServer([reply(PY_SNOOP, "reads the environment", "python")],
                         default_text=None) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        proposer = resolve("gpt-4.1-mini", exp, temperature=0.4)
        summary = run_loop(exp, proposer, Options(iterations=1, drift_every=0))
        posts = srv.posts()
    assert posts[0].headers.get("authorization") == f"Bearer {CANARY}"  # the loop had it
    # accepted as the best: it ran in the sandbox, read a non-empty environment, and found
    # neither the key nor a variable named like one (else it would have answered -1 or -2)
    assert summary.outcomes[0].status == "accepted_best"
    assert CANARY not in all_text(folder.parents[1])


@needs_gcc
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
