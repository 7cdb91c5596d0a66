"""claude-cli and codex-cli as real subprocesses: fake executables on PATH."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from ratchetloop.errors import ProposerError
from ratchetloop.proposers.agents import ClaudeCLIProposer, CodexCLIProposer
from ratchetloop.proposers.base import CACHE_BREAK, ProposalFailed

FAKE = r"""#!{python}
import json, os, sys, time, subprocess
from pathlib import Path
here = Path(__file__).resolve().parent
prompt = sys.stdin.read()
(here / "seen.json").write_text(json.dumps(
    {{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "prompt": prompt}}))
mode = (here / "mode").read_text().strip() if (here / "mode").exists() else "ok"
if mode == "hang":
    child = subprocess.Popen(["sleep", "60"])
    (here / "child.pid").write_text(str(child.pid))
    time.sleep(60)
if mode == "crash":
    print("fatal: something broke", file=sys.stderr)
    sys.exit(3)
if mode == "garbage":
    print("this is not json")
    sys.exit(0)
sys.stdout.write((here / "reply").read_text())
"""

CLAUDE_OK = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 1200,
    "num_turns": 1,
    "result": "int f(void) { return 2; }\nNote: constant",
    "session_id": "abc",
    "total_cost_usd": 0.0123,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 500,
        "cache_read_input_tokens": 3000,
        "output_tokens": 80,
    },
    "modelUsage": {"claude-sonnet-4-6": {"inputTokens": 12, "outputTokens": 80}},
}

CODEX_OK = "\n".join(
    json.dumps(e)
    for e in [
        {"type": "thread.started", "thread_id": "t1"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "i0", "type": "reasoning", "text": "hmm"}},
        {"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": "ans"}},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 50},
        },
    ]
)


@pytest.fixture
def fakebin(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("claude", "codex"):
        exe = bindir / name
        exe.write_text(FAKE.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-agentkey")
    monkeypatch.setenv("SOME_OTHER_SECRET", "do-not-leak")
    monkeypatch.setenv("RATCHET_KEYS_FILE", str(tmp_path / "nokeys.json"))
    return bindir


def seen(bindir: Path) -> dict:
    return json.loads((bindir / "seen.json").read_text())


def test_claude_cli_answer_usage_cost_and_scrubbed_env(fakebin):
    (fakebin / "reply").write_text(json.dumps(CLAUDE_OK))
    out = ClaudeCLIProposer("claude-sonnet-4-6").propose(f"stable\n{CACHE_BREAK}\nrest")
    got = seen(fakebin)
    assert got["argv"][:3] == ["-p", "--output-format", "json"]
    assert got["argv"][-2:] == ["--model", "claude-sonnet-4-6"]
    assert got["prompt"] == "stable\nrest"
    assert got["env"]["ANTHROPIC_API_KEY"] == "sk-ant-agentkey"
    assert "SOME_OTHER_SECRET" not in got["env"]
    assert Path(got["cwd"]).name.startswith("ratchet-agent-")
    assert not Path(got["cwd"]).exists()  # temp dir cleaned up
    assert out.text.startswith("int f(void)")
    assert out.usage.prompt_tokens == 3512 and out.usage.cached_prompt_tokens == 3000
    assert out.usage.cache_write_tokens == 500 and out.usage.completion_tokens == 80
    assert out.usage.cost_usd == pytest.approx(0.0123)  # the CLI's own figure
    assert out.model == "claude-cli:claude-sonnet-4-6"
    assert "sk-ant-agentkey" not in json.dumps(out.request)


def test_claude_cli_price_override_wins(fakebin):
    (fakebin / "reply").write_text(json.dumps(CLAUDE_OK))
    prices = {"claude-cli": {"input": 0, "output": 1_000_000}}
    out = ClaudeCLIProposer(prices=prices).propose("x")
    assert out.usage.cost_usd == pytest.approx(80.0)


def test_claude_cli_error_result_is_recorded_and_auth_stops(fakebin):
    bad = {**CLAUDE_OK, "is_error": True, "subtype": "error_during_execution", "result": "boom"}
    (fakebin / "reply").write_text(json.dumps(bad))
    with pytest.raises(ProposalFailed) as info:
        ClaudeCLIProposer().propose("x")
    assert info.value.kind == "agent_error"
    auth = {**bad, "subtype": "success", "result": "Invalid API key · Please run /login"}
    (fakebin / "reply").write_text(json.dumps(auth))
    with pytest.raises(ProposerError, match="not authenticated"):
        ClaudeCLIProposer().propose("x")


def test_codex_cli_jsonl_answer_and_usage(fakebin, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-codexkey")
    (fakebin / "reply").write_text(CODEX_OK)
    out = CodexCLIProposer("gpt-5").propose("prompt")
    got = seen(fakebin)
    assert got["argv"][:2] == ["exec", "--json"] and got["argv"][-1] == "-"
    assert "read-only" in got["argv"] and "--skip-git-repo-check" in got["argv"]
    assert got["prompt"] == "prompt"
    assert got["env"]["OPENAI_API_KEY"] == "sk-codexkey"
    assert "ANTHROPIC_API_KEY" not in got["env"] and "SOME_OTHER_SECRET" not in got["env"]
    assert out.text == "ans"
    assert (out.usage.prompt_tokens, out.usage.cached_prompt_tokens) == (1000, 400)
    assert out.usage.completion_tokens == 50
    assert out.usage.cost_usd is not None and out.usage.cost_usd > 0  # gpt-5 is in the table


def test_codex_cli_unknown_model_cost_is_unknown(fakebin):
    (fakebin / "reply").write_text(CODEX_OK)
    assert CodexCLIProposer().propose("p").usage.cost_usd is None


def test_timeout_kills_the_process_group(fakebin):
    (fakebin / "mode").write_text("hang")
    started = time.monotonic()
    with pytest.raises(ProposalFailed) as info:
        ClaudeCLIProposer(timeout=0.8).propose("x")
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 10
    child = int((fakebin / "child.pid").read_text())
    for _ in range(200):  # the grandchild was SIGKILLed with the group; wait for reaping
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.01)
    else:
        pytest.fail("grandchild survived the timeout")


def test_crash_and_garbage_are_recorded_failures(fakebin):
    (fakebin / "mode").write_text("crash")
    with pytest.raises(ProposalFailed, match="something broke") as info:
        ClaudeCLIProposer().propose("x")
    assert info.value.kind == "exit_3"
    (fakebin / "mode").write_text("garbage")
    with pytest.raises(ProposalFailed) as info:
        CodexCLIProposer().propose("x")
    assert info.value.kind == "malformed_response"


def test_missing_executable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProposerError, match="not on PATH"):
        CodexCLIProposer().propose("x")


def test_budget_is_checked_before_the_agent_is_started(fakebin):
    from ratchetloop.budget import Budget, BudgetExceeded

    (fakebin / "reply").write_text(json.dumps(CLAUDE_OK))
    p = ClaudeCLIProposer("claude-sonnet-4-6")
    p.budget = Budget(max_tokens=10_000)  # the reply alone is assumed up to 16000
    with pytest.raises(BudgetExceeded, match="token budget 10000"):
        p.propose("x")
    assert not (fakebin / "seen.json").exists()  # never started
    p.budget = Budget(max_cost=1.0)  # priced by its model: $0.24 at most
    assert p.propose("x").usage.cost_usd == pytest.approx(0.0123)
    codex = CodexCLIProposer()  # no model, so no price: a cost budget cannot be held
    codex.budget = Budget(max_cost=1.0)
    with pytest.raises(BudgetExceeded, match="price of codex-cli is unknown"):
        codex.propose("x")
