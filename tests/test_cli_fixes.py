"""Everyday CLI paths that crashed or misled (issue 14's "Fix" list): each test here failed
on the code before its fix (the docstrings say how)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import (
    ITERATIVE,
    NAIVE,
    RATCHET,
    git,
    make_exp_repo,
    reply,
    run_ratchet,
    slow_fib,
    write_replay,
)
from fakeservers import FakeModelServer, Reply
from markdown_it import MarkdownIt

from ratchetloop import experiment as experiment_mod
from ratchetloop.cli import main
from ratchetloop.errors import ProposerError
from ratchetloop.loop import Options, QuietReporter, Summary, host_line, run_loop
from ratchetloop.proposers.openai import OpenAIProposer
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.proposers.retry import RetryPolicy
from ratchetloop.scores import Row, Scores
from ratchetloop.seed import reset
from ratchetloop.winners import comment

LONG_NOTE = ("iterate bottom-up with two variables a and b, keeping only the last pair, which"
             " turns the exponential recursion into a linear loop [keep a[i]]")


def cli(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, list(args))


class Played(ReplayProposer):
    summary: Summary


def one_run(folder: Path, replies: list[str], n: int | None = None,
            until: int | None = None) -> Played:
    """One in-process run with scripted replies; the proposer keeps prompts and summary."""
    proposer = Played(replies)
    options = Options(iterations=n or 1, until=until)
    proposer.summary = run_loop(experiment_mod.load(folder), proposer, options, QuietReporter())
    return proposer


def win_once(fib: Path) -> tuple[Path, str]:
    """One accepted winner (ITERATIVE, a long note); returns (folder, its commit)."""
    one_run(fib, [reply(ITERATIVE, LONG_NOTE)])
    sha = json.loads((fib / "SCORES.json").read_text())["best_commit"]
    assert sha
    return fib, sha


@pytest.fixture
def fib_won(fib: Path) -> tuple[Path, str]:
    return win_once(fib)


@pytest.fixture(scope="module")
def fib_won_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The same, made once for the tests that only read it."""
    root = tmp_path_factory.mktemp("won")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RATCHET_BENCH_LOCK", str(root / "bench.lock"))
        yield win_once(make_exp_repo(root, "fib"))


# ------------------------------------------------------------------ 1. unknown statuses


def test_history_survives_interrupted_and_unknown_statuses(fib: Path) -> None:
    """Old code built `[]interrupted[/]` for a status without a style: rich's MarkupError
    on every later `ratchet history`; a non-object attempt.json was an AttributeError."""
    for n, data in [(1, {"iteration": 1, "status": "interrupted", "message": "Ctrl-C"}),
                    (2, {"iteration": 2, "status": "from_the_future", "score": 3}),
                    (3, ["not", "an", "attempt"]),
                    (4, {"iteration": 4, "status": None, "note": "[/] keep a[i]"})]:
        folder = fib / "runs" / f"{n:04d}"
        folder.mkdir(parents=True)
        (folder / "attempt.json").write_text(json.dumps(data))
    out = cli("history", str(fib))
    assert out.exit_code == 0, out.output
    assert "interrupted" in out.output and "from_the_future" in out.output
    assert "keep a[i]" in out.output


# ------------------------------------------------------------------ 2. piped output


def piped_to(target: Path, *args: str) -> str:
    """`ratchet ARGS > target` (stdout a file, not a terminal); the file's text."""
    with target.open("w") as fh:
        proc = subprocess.run([RATCHET, *args], stdout=fh, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    assert proc.returncode == 0, proc.stderr
    return target.read_text()


def test_scores_piped_to_a_file_is_valid_markdown(fib_won_shared: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    """Old code printed through rich, which wraps at 80 columns when not on a terminal:
    the long note broke the table row in two."""
    fib, sha = fib_won_shared
    text = piped_to(tmp_path / "s.md", "scores", str(fib))
    assert "\x1b" not in text
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t.content for t in tokens if t.type == "inline"]
    assert any(LONG_NOTE in c for c in cells) and sha in cells, text
    assert len(rows) == 3  # header, the winner, the seed
    assert text == (fib / "SCORES.md").read_text()


def test_best_piped_to_a_file_builds(fib_won_shared: tuple[Path, str],
                                     tmp_path: Path) -> None:
    """Old code wrapped the `# fib best: ...` header at 80 columns: line two was not a
    comment, so the file did not compile."""
    fib, _ = fib_won_shared
    target = tmp_path / "k.py"
    source = piped_to(target, "best", str(fib))
    compile(source, str(target), "exec")
    assert LONG_NOTE in source.splitlines()[0] and ITERATIVE.strip() in source


def test_best_of_linear_piped_compiles_with_gcc(exp_repo: Callable[..., Path],
                                                tmp_path: Path) -> None:
    """Old code wrote a `# linear best: ...` line first: gcc reads it as the invalid
    preprocessing directive `#linear`."""
    linear = exp_repo("linear", cases=["small_nobias"])
    naive = (linear / "naive.c").read_text()
    one_run(linear, [f"```c\n{naive}\n```\nNote: the seed again */ [sic]\n"])  # a duplicate
    target = tmp_path / "k.c"
    piped_to(target, "best", str(linear))
    built = subprocess.run(["gcc", "-c", str(target), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr + target.read_text()[:300]
    header = comment("a model's note that says */ int broken; /* and [/]", "c")
    target.write_text(header + "\nint fine;\n")
    built = subprocess.run(["gcc", "-c", str(target), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
    assert built.returncode == 0 and "*/" not in header[3:-3], built.stderr


# ------------------------------------------------------------------ 3. exit codes


def test_ctrl_c_exits_130_after_the_summary_and_history_still_works(fib: Path) -> None:
    """Old code caught Ctrl-C inside the loop and exited 0; and the `interrupted` attempt
    it recorded made every later `ratchet history` crash."""
    with FakeModelServer([Reply(hang=True)]) as srv:
        proc = subprocess.Popen([RATCHET, "run", str(fib), "--model",
                                 f"openai-compatible:fake@{srv.openai_base_url}", "--loop", "3"],
                                cwd=fib, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert srv.posted.wait(120), "the run never asked the model"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted (Ctrl-C)" in out and "Traceback" not in err
    attempt = json.loads((fib / "runs" / "0001" / "attempt.json").read_text())
    assert attempt["status"] == "interrupted"
    history = cli("history", str(fib))
    assert history.exit_code == 0 and "interrupted" in history.output, history.output


def test_loop_must_be_at_least_one_and_setup_errors_are_not_zero(fib: Path) -> None:
    """Old code took --loop 0 (and -3) and exited 0 having done nothing."""
    for bad in ("0", "-3"):
        out = cli("run", str(fib), "--loop", bad)
        assert out.exit_code == 2 and "--loop" in out.output, out.output
    out = cli("run", str(fib / "nowhere"), "--loop", "1")
    assert out.exit_code == 2 and "no experiment" in out.output


def test_exhausted_replay_script_ends_with_the_summary_and_exit_0(fib: Path,
                                                                   tmp_path: Path) -> None:
    """Old code raised 'replay script exhausted' as an error: exit 2, no summary."""
    model = write_replay(tmp_path / "r.json", [reply(NAIVE, "the seed again")])
    proc = run_ratchet("run", str(fib), "--model", model, "--loop", "3", cwd=fib)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replay script exhausted" in proc.stdout and "duplicate 1" in proc.stdout


# ------------------------------------------------------------------ 4. infrastructure


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_nothing_listening_stops_the_run_after_the_retry_policy(fib: Path) -> None:
    """Through the real openai SDK to a closed port. Old code recorded connection_error
    as a candidate failure every iteration (into MEMORY.md, and so into later prompts)."""
    waits: list[float] = []
    proposer = OpenAIProposer("fake", base_url=f"http://127.0.0.1:{closed_port()}/v1",
                              local=True, key_var=None,
                              retry=RetryPolicy(max_attempts=3, sleep=waits.append))
    exp = experiment_mod.load(fib)
    with pytest.raises(ProposerError) as info:
        run_loop(exp, proposer, Options(iterations=3), QuietReporter())
    line = str(info.value)
    assert "cannot connect" in line and "gave up after 3 attempts" in line
    assert "\n" not in line and len(waits) == 2  # the policy ran once, not per iteration
    assert "connection_error" not in (fib / "MEMORY.md").read_text()
    assert not (fib / "runs" / "0002").exists()


def test_server_failures_mid_run_are_recorded_but_never_shown_to_the_model(fib: Path) -> None:
    """Old code put `http_500` into MEMORY.md's failures and the next prompt's "your last
    attempt failed"; it is the server's failure, not the candidate's."""
    with FakeModelServer([reply(NAIVE, "the seed again")], default_text=None) as srv:
        proposer = OpenAIProposer("fake", base_url=srv.openai_base_url, local=True,
                                  key_var=None,
                                  retry=RetryPolicy(max_attempts=2, sleep=lambda s: None))
        summary = run_loop(experiment_mod.load(fib), proposer, Options(iterations=3),
                           QuietReporter())
        prompts = [json.dumps(r.body) for r in srv.posts()]
    assert [o.status for o in summary.outcomes] == ["duplicate", "failed", "failed"]
    assert summary.outcomes[1].failure_kind == "http_500"
    memory = (fib / "MEMORY.md").read_text() + (fib / "MEMORY.json").read_text()
    assert "http_500" not in memory and "server error" not in memory
    assert all("server error" not in p and "http_500" not in p for p in prompts)
    attempt = json.loads((fib / "runs" / "0003" / "attempt.json").read_text())
    assert attempt["failure_kind"] == "http_500"
    assert json.loads((fib / "SCORES.json").read_text())["counts"]["failed"] == 2


# ------------------------------------------------------------------ 5. rollback


def test_rollback_makes_the_loop_time_against_the_restored_winner(
        fib_won: tuple[Path, str]) -> None:
    """Old code changed candidate.py only: the next run still showed and timed the best
    from SCORES (ITERATIVE) as the incumbent, so a candidate better than the restored seed
    but worse than ITERATIVE was rejected."""
    fib, sha = fib_won
    out = cli("rollback", str(fib), "seed")
    assert out.exit_code == 0, out.output
    assert (fib / "candidate.py").read_text() == NAIVE
    assert "rolled back to seed" in (fib / "SCORES.md").read_text()
    middle = slow_fib(2000)  # far faster than the recursive seed, slower than ITERATIVE
    proposer = one_run(fib, [reply(middle, "waste a little, skip the recursion")])
    assert "return fib(n - 1) + fib(n - 2)" in proposer.prompts[0]
    assert "a, b = b, a + b" not in proposer.prompts[0]
    assert [o.status for o in proposer.summary.outcomes] == ["accepted_best"]
    out = cli("rollback", str(fib))  # the default: the best-scoring winner, ITERATIVE
    assert out.exit_code == 0 and (fib / "candidate.py").read_text() == ITERATIVE
    assert json.loads((fib / "SCORES.json").read_text())["best_commit"] == sha


def test_winners_kept_after_seed_are_reachable_by_rollback(fib_won: tuple[Path, str]) -> None:
    """Old code refused: after seed.py the scoreboard has no rows, so `ratchet rollback fib
    <sha>` said "not an accepted winner" although winners/<sha>/ was kept for it."""
    fib, sha = fib_won
    reset(fib)
    assert (fib / "winners" / sha).is_dir()
    out = cli("rollback", str(fib), sha)
    assert out.exit_code == 0, out.output
    assert (fib / "candidate.py").read_text() == ITERATIVE
    sc = Scores.model_validate_json((fib / "SCORES.json").read_text())
    assert sc.best_commit == sha and sc.best is not None and sc.best.note == LONG_NOTE


def test_generic_rollback_after_rollback_and_back_to_seed(tmp_path: Path) -> None:
    """Old code: the first rollback left calc.py modified, so the second one (and `seed`)
    refused with "uncommitted changes"."""
    from generic_helpers import CALC, calc_reply, make_repo

    from ratchetloop.generic import session_parts
    from ratchetloop.generic.contract import MetricSpec
    from ratchetloop.generic.init import init_project

    repo = make_repo(tmp_path)
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"))
    exp = experiment_mod.load(folder)
    reporter, workspace = session_parts(exp, QuietReporter())
    run_loop(exp, ReplayProposer([calc_reply(5, "five")]), Options(iterations=1), reporter,
             workspace)
    winner = "def cost():\n    return 5\n"
    for _ in range(2):
        out = cli("rollback", str(folder))
        assert out.exit_code == 0, out.output
        assert (repo / "calc.py").read_text() == winner
    out = cli("rollback", str(folder), "seed")
    assert out.exit_code == 0, out.output
    assert (repo / "calc.py").read_text() == CALC
    assert git(repo, "status", "--porcelain", "calc.py").strip() == ""
    (repo / "calc.py").write_text("def cost():\n    return 7  # mine\n")
    out = cli("rollback", str(folder))
    assert out.exit_code == 2 and "uncommitted changes" in out.output  # the user's edit
    assert "mine" in (repo / "calc.py").read_text()
    git(repo, "checkout", "--", "calc.py")
    sha = json.loads((folder / "SCORES.json").read_text())["best_commit"]
    reset(folder)  # a fresh search: the scoreboard forgets, winners/ keeps it
    out = cli("rollback", str(folder), sha)
    assert out.exit_code == 0, out.output
    assert (repo / "calc.py").read_text() == winner


# ------------------------------------------------------------------ 6. init direction


def test_init_without_a_direction_off_a_terminal_is_an_error(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Old code silently chose lower-is-better when stdin was not a terminal."""
    from generic_helpers import make_repo

    repo = make_repo(tmp_path)
    monkeypatch.chdir(repo)
    out = cli("init", "--tag", "t", "--edit", "calc.py", "--run", "python3 score.py")
    assert out.exit_code == 2
    assert "--higher-is-better or --lower-is-better" in out.output
    assert not (repo / ".ratchet" / "t").exists()


# ------------------------------------------------------------------ 7. names


def test_commit_messages_use_the_folder_name(exp_repo: Callable[..., Path]) -> None:
    """Old code wrote experiment.json's `name` ("fib") into a copied folder's commits."""
    fib = exp_repo("fib")
    copy = fib.with_name("fast_fib")
    fib.rename(copy)
    git(copy.parents[1], "add", "-A")
    git(copy.parents[1], "commit", "-qm", "rename")
    one_run(copy, [reply(ITERATIVE, "iterate")])
    subjects = git(copy.parents[1], "log", "--format=%s").splitlines()
    assert subjects[0].startswith("Record fast_fib winner")
    assert subjects[1].startswith("Accept fast_fib winner")
    body = git(copy.parents[1], "log", "-1", "--skip=1", "--format=%B")
    assert "Ratchet-Experiment: fast_fib" in body
    # the next run restores rows from these commits (a dropped scoreboard loses nothing)
    (copy / "SCORES.json").unlink()
    proposer = one_run(copy, [reply(NAIVE, "seed")])
    assert json.loads((copy / "SCORES.json").read_text())["counts"]["accepted"] == 1
    assert proposer.summary.best.note == "iterate"


# ------------------------------------------------------------------ 8. wording, labels


def test_one_iteration_is_singular_and_host_is_said_once(fib: Path) -> None:
    """Old code said "completed 1 iterations" and "host: host busy: ..."."""
    proposer = one_run(fib, [reply(NAIVE, "seed")])
    assert proposer.summary.stop_reason == "completed 1 iteration"
    assert host_line("host busy: load average 3.0") == "host busy: load average 3.0"
    assert host_line("pid 12 (yes) uses a core") == "host: pid 12 (yes) uses a core"


def _scores(direction: str) -> Scores:
    seed = Row(timestamp="t0", model="seed", kind="seed", score=100.0, commit="seed",
               note="naive seed")
    lower = direction == "lower_is_better"
    win = Row(timestamp="t1", model="m", kind="best", score=50.0 if lower else 200.0,
              commit="abc1234", note="n", iteration=1, ratio=0.5 if lower else 2.0,
              ci=(0.4, 0.6) if lower else (1.5, 2.5))
    return Scores(experiment="x", unit="us", direction=direction, seed=seed, rows=[win],
                  best_commit="abc1234")


def test_scores_md_labels_the_sum_shows_the_ci_both_ways_and_explains_win() -> None:
    """Old code: a bare "Median" column (it is the median of the suite sum), no interval
    for higher-is-better, and an unexplained Win against a seed timed in another run."""
    low, high = _scores("lower_is_better").render(), _scores("higher_is_better").render()
    for text in (low, high):
        assert "| Median (suite sum) |" in text and "Win vs seed*" in text
        assert "timed alone on t0" in text and "not side by side" in text
    assert "[x1.667..x2.500 vs incumbent]" in low
    assert "[x1.500..x2.500 vs incumbent]" in high


# ------------------------------------------------------------------ 9. --loop / --until


def test_until_counts_in_total_loop_counts_more(fib: Path, tmp_path: Path) -> None:
    """Old code had no --until: --loop N on resume always meant N more, unsaid."""
    one_run(fib, [reply(NAIVE, "seed")])
    proposer = one_run(fib, [reply(NAIVE, "again")] * 3, until=3)
    assert proposer.summary.stop_reason == "completed 2 more, 3 in all (--until 3)"
    assert sorted(p.name for p in (fib / "runs").iterdir()) == ["0001", "0002", "0003"]
    proposer = one_run(fib, [reply(NAIVE, "again")], until=2)
    assert "nothing to run" in proposer.summary.stop_reason and not proposer.prompts
    proposer = one_run(fib, [reply(NAIVE, "again")], n=1)
    assert proposer.summary.stop_reason == "completed 1 iteration, 4 in all"
    out = cli("run", str(fib), "--loop", "2", "--until", "9")
    assert out.exit_code == 2 and "give one" in out.output
    helptext = cli("run", "--help").output
    assert "--until" in helptext and "in total" in helptext and "more" in helptext
