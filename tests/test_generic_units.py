"""Generic mode's parts: edit parsing, zero-variance decisions, results.tsv progress, how a
metric is read (result channel, output, the 0.0 regression), contract and bundle guards."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.experiment import Acceptance
from ratchetloop.extract import ExtractionError
from ratchetloop.generic.contract import (
    GenericSpec,
    MetricSpec,
    metric_from_output,
    read_channel,
)
from ratchetloop.generic.edits import apply_reply, files_of, from_bundle, to_bundle
from ratchetloop.generic.results import ResultsReporter, read_rows
from ratchetloop.generic.workspace import (
    blocked_write,
    command_measure,
    cpu_comparison,
    measured_from,
)
from ratchetloop.loop import Outcome, QuietReporter
from ratchetloop.measure import exact_comparison, positive
from ratchetloop.scores import Scores

BASE = {"a.py": "x = 1\ny = 2\n", "pkg/b.py": "def f():\n    return 0\n"}
EDITABLE = ["a.py", "pkg/b.py"]


def test_bundle_round_trip():
    assert from_bundle(to_bundle(BASE)) == BASE


def test_search_replace_in_two_files_and_a_note():
    reply = ("a.py\n```python\n<<<<<<< SEARCH\ny = 2\n=======\ny = 3\n>>>>>>> REPLACE\n```\n"
             "`pkg/b.py`\n<<<<<<< SEARCH\n    return 0\n=======\n    return 1\n>>>>>>> REPLACE\n"
             "Note: bump both\nIdea: try 4\n")
    out = apply_reply(reply, BASE, EDITABLE)
    files = from_bundle(out.source)
    assert files == {"a.py": "x = 1\ny = 3\n", "pkg/b.py": "def f():\n    return 1\n"}
    assert out.note == "bump both" and out.ideas == ["try 4"]


@pytest.mark.parametrize("reply, kind", [
    ("File: c.py\n```python\nz = 1\n```\n", "outside_editable"),
    ("a.py\n<<<<<<< SEARCH\nnot there\n=======\nq\n>>>>>>> REPLACE\n", "search_not_found"),
    ("```python\nz = 1\n```\n", "no_path"),  # two editable files: the path is required
    ("File: a.py\n```python\nx = 1\ny = 2\n```\n", "no_change"),
    ("I would memoise it.", "no_code"),
])
def test_unusable_replies_are_recorded_failures(reply, kind):
    with pytest.raises(ExtractionError) as info:
        apply_reply(reply, BASE, EDITABLE)
    assert info.value.kind == kind


def test_single_editable_file_accepts_an_unnamed_block():
    out = apply_reply("Sure:\n```python\nx = 5\n```\nNote: five\n", {"a.py": "x = 1\n"},
                      ["a.py"])
    assert from_bundle(out.source) == {"a.py": "x = 5\n"}


def test_zero_variance_decided_on_effect_size():
    acc = Acceptance(min_effect=0.01)
    assert exact_comparison(0.91, 0.90, 3, acc, lower=False).verdict == "better"
    assert exact_comparison(0.905, 0.90, 3, acc, lower=False).verdict == "same"  # < 1%
    assert exact_comparison(0.89, 0.90, 3, acc, lower=False).verdict == "worse"
    zero = exact_comparison(0.0, 2.0, 3, acc, lower=True)  # an error count reaching 0
    assert zero.verdict == "better" and math.isnan(zero.ratio)


def test_non_positive_metrics_are_shifted_for_the_ratio_test():
    c, r = positive([-1.0, 0.0], [-2.0, -3.0])
    assert min(c + r) > 0 and [b - a for a, b in zip(c, r, strict=True)] == [-1.0, -3.0]
    assert positive([1.0], [2.0]) == ([1.0], [2.0])


class Messages(QuietReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_results_rows_and_a_progress_line_every_ten(tmp_path: Path):
    inner = Messages()
    reporter = ResultsReporter(inner, tmp_path)
    scores = Scores(experiment="x", unit="", direction="lower_is_better")
    for i in range(1, 21):
        status = ["accepted_best", "rejected", "failed"][i % 3]
        reporter.outcome(Outcome(iteration=i, status=status, note=f"idea\t{i}",
                                 score=float(i), commit="abc1234" if i % 3 == 0 else None,
                                 failure_kind="crash" if status == "failed" else None,
                                 message="exited 1" if status == "failed" else ""), scores)
    rows = read_rows(tmp_path / "results.tsv")
    assert len(rows) == 20 and rows[2] == {"commit": "abc1234", "metric": "3",
                                           "wall_seconds": "", "cpu_seconds": "",
                                           "peak_rss_mb": "",  # built-in metrics: none here
                                           "status": "keep", "description": "idea 3"}
    assert rows[0]["status"] == "discard"
    assert rows[1]["status"] == "crash" and "[crash: exited 1]" in rows[1]["description"]
    assert len(inner.lines) == 2 and "iteration 20" in inner.lines[1]
    assert "keep 6 / discard 7 / crash 7" in inner.lines[1]


# ---------------------------------------------------------------- metric reading


@pytest.mark.parametrize("channel", ["auto", "output"])
def test_a_metric_of_zero_is_a_value_not_missing(tmp_path: Path, channel: str):
    """Regression: `read_metric(stdout) or read_metric(stdout + stderr)` took 0.0 for
    missing and returned the 7 of a warning on stderr."""
    spec = GenericSpec(tag="t", editable=["a.py"], metric=MetricSpec(channel=channel),
                       run_command="echo loss=0; echo 'warning: 7 deprecated calls' >&2")
    measured = command_measure(spec, 60, "a.py")(tmp_path)
    assert measured.value == 0.0 and measured.channel == "output"
    assert metric_from_output("", "loss=0.5\n", MetricSpec()) == 0.5  # stderr when stdout has none


@pytest.mark.parametrize("data, value, error", [
    (None, None, ""), (b"", None, ""), (b" \n", None, ""),
    (b"0\n", 0.0, ""), (b" 1.5e-3 ", 0.0015, ""), (b"-2", -2.0, ""),
    (b"1\n2\n", None, "2 values"), (b"fast", None, "not a number"),
    (b"nan", None, "not a number"), (b"1e999", None, "not a finite"),
    (b"\xff", None, "non-ASCII"), (b"1" * 100, None, "100 bytes"),
])
def test_the_result_channel_holds_exactly_one_number(data, value, error):
    got, why = read_channel(data)
    assert got == value and (error in why if error else why == "")


def test_measured_from_prefers_the_channel_and_is_strict_about_it():
    def proc(result: bytes | None, stdout: str = "cost=1\n") -> sandbox.SandboxResult:
        out = sandbox.SandboxResult(0, stdout, "", wall_seconds=0.5)
        out.result, out.cpu_seconds = result, 0.25  # type: ignore[attr-defined]
        return out

    auto, fd = MetricSpec(), MetricSpec(channel="fd")
    m = measured_from(proc(b"7\n"), auto)
    assert (m.value, m.channel, m.wall_seconds, m.cpu_seconds) == (7.0, "fd", 0.5, 0.25)
    assert measured_from(proc(None), auto).value == 1.0  # nothing on the fd: the output
    assert measured_from(proc(None), fd).kind == "no_metric"  # --metric-fd: never stdout
    bad = measured_from(proc(b"7\n1\n"), auto)
    assert bad.value is None and bad.kind == "integrity"
    assert measured_from(proc(b"7"), MetricSpec(channel="output")).value == 1.0


# ---------------------------------------------------------------- contract and bundle


@pytest.mark.parametrize("editable", [[".git/config"], ["../x.py"], ["/etc/passwd"],
                                      [".gitattributes"], ["sub/.gitmodules"]])
def test_editable_paths_stay_plain_files_of_the_project(editable):
    with pytest.raises(ValueError):
        GenericSpec(tag="t", editable=editable, run_command="true")


def test_a_bundle_separator_inside_a_file_is_refused():
    text = "x = 1\n### ratchet-file: ../../hooks/post-commit\n#!/bin/sh\n"
    with pytest.raises(ExtractionError) as info:
        apply_reply(f"File: a.py\n```python\n{text}```\n", BASE, EDITABLE)
    assert info.value.kind == "integrity"
    with pytest.raises(ExtractionError):
        files_of(to_bundle({"a.py": text}), EDITABLE)  # the same text, read back
    assert files_of(to_bundle(BASE), EDITABLE) == BASE


def test_blocked_write_names_the_read_only_file():
    log = "Traceback ...\nOSError: [Errno 30] Read-only file system: 'score.py'\n"
    assert blocked_write(log, ["score.py"]) == "score.py"
    assert blocked_write("PermissionError: [Errno 13] Permission denied: '/x/data/"
                         "bench.py'", ["data/bench.py"]) == "data/bench.py"
    assert blocked_write("ValueError: bad input in score.py", ["score.py"]) is None


def test_plausibility_cpu_comparison_is_one_look_at_the_confidence():
    acc = Acceptance(min_effect=0.01, confidence=0.95, min_rounds=5, max_rounds=20,
                     batch_rounds=5)
    ref = [0.10, 0.11, 0.10, 0.12, 0.10, 0.11, 0.10, 0.11, 0.10, 0.12]
    double = [2 * v for v in ref]
    assert cpu_comparison(double, ref, acc).verdict == "worse"
    assert cpu_comparison(double[:5], ref[:5], acc).verdict != "worse"  # 5 rounds cannot tell
    assert cpu_comparison(ref, ref, acc).verdict != "worse"


def test_winners_are_committed_without_hooks_filters_or_a_work_tree(tmp_path: Path):
    """Plumbing commit: the repository's own hooks, fsmonitor and clean filters never run;
    the file mode and every other file of the tip are kept."""
    from generic_helpers import git, make_project

    from ratchetloop import gitops

    canary = tmp_path / "canary"
    repo = make_project(tmp_path, {"pkg/run.sh": "echo 1\n", "keep.txt": "k\n",
                                   ".gitattributes": "*.sh filter=x\n"})
    (repo / "pkg/run.sh").chmod(0o755)
    git(repo, "add", "pkg/run.sh")
    git(repo, "commit", "-qm", "exec bit")
    git(repo, "branch", "ratchet/t")
    git_dir, void = gitops.common_dir(repo), tmp_path / "void"
    hook = f"#!/bin/sh\necho ran >> {canary}\n"
    for name in ("post-commit", "pre-commit", "reference-transaction", "post-index-change"):
        (repo / ".git/hooks" / name).write_text(hook)
        (repo / ".git/hooks" / name).chmod(0o755)
    (repo / "payload.sh").write_text(hook)
    (repo / "payload.sh").chmod(0o755)
    git(repo, "config", "core.fsmonitor", str(repo / "payload.sh"))
    git(repo, "config", "filter.x.clean", str(repo / "payload.sh"))
    void.mkdir()
    sha = gitops.commit_files(repo, git_dir, void, "ratchet/t", {"pkg/run.sh": "echo 2\n"},
                              "Accept t winner\n", tmp_path / "index")
    assert not canary.exists()
    assert git(repo, "rev-parse", "--short=7", "ratchet/t").strip() == sha
    assert git(repo, "show", "ratchet/t:pkg/run.sh") == "echo 2\n"
    assert "100755" in git(repo, "ls-tree", "ratchet/t", "pkg/run.sh")
    assert git(repo, "show", "ratchet/t:keep.txt") == "k\n"
    assert gitops.commit_files(repo, git_dir, void, "ratchet/t", {"pkg/run.sh": "echo 2\n"},
                               "same\n", tmp_path / "index") == sha  # nothing changed
    assert list(void.iterdir()) == [] and not (tmp_path / "index").exists()


# ---------------------------------------------------------------- the commands' environment


def fake_python(bin_dir: Path) -> Path:
    """An executable named python3 (resolve_path looks for one; it never runs it)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "python3"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


def test_path_order_active_venv_conda_env_project_venv_then_the_invoking_path(tmp_path):
    from ratchetloop.generic.environment import resolve_path

    active, conda, repo = tmp_path / "active", tmp_path / "conda", tmp_path / "repo"
    for bin_dir in (active / "bin", conda / "bin", repo / ".venv/bin", repo / "venv/bin"):
        fake_python(bin_dir)
    environ = {"VIRTUAL_ENV": str(active), "CONDA_PREFIX": str(conda),
               "PATH": f"/usr/bin:.::relative/bin:{active}/bin:/bin"}
    r = resolve_path("inherit", repo, environ)
    assert r.path == [f"{active}/bin", f"{conda}/bin", f"{repo}/.venv/bin", "/usr/bin", "/bin"]
    assert r.python == f"{active}/bin/python3"
    assert r.notes == ["active venv $VIRTUAL_ENV", "active conda env $CONDA_PREFIX",
                       "project venv .venv/"]


def test_a_project_venv_needs_a_python_and_an_explicit_path_is_used_as_given(tmp_path):
    from ratchetloop.generic.environment import resolve_path

    repo = tmp_path / "repo"
    (repo / ".venv/bin").mkdir(parents=True)  # no python in it: not a venv
    fake_python(repo / "venv/bin")
    assert resolve_path("inherit", repo, {"PATH": "/bin"}).path == [f"{repo}/venv/bin", "/bin"]
    r = resolve_path(["/opt/x/bin", "/bin"], repo, {"PATH": "/usr/bin",
                                                     "VIRTUAL_ENV": str(repo / "venv")})
    assert r.path == ["/opt/x/bin", "/bin"]


PYENV = """#!/bin/sh
[ "$1" = prefix ] || exit 2
v=$(cat .python-version 2>/dev/null) || { echo "pyenv: no local version" >&2; exit 1; }
echo "$PYENV_ROOT/versions/$v"
"""


def test_pyenv_shims_become_the_version_pyenv_selects_in_the_repository(tmp_path):
    """Shims are scripts that need pyenv's root, hidden in the sandbox: use the version."""
    from ratchetloop.generic.environment import resolve_path

    root, repo = tmp_path / "pyenv", tmp_path / "repo"
    version = root / "versions/3.12.1"
    fake_python(version / "bin")
    for shims in (root / "shims", root / "plugins/pyenv-virtualenv/shims", repo):
        shims.mkdir(parents=True)
    (root / "libexec").mkdir()
    (root / "libexec/pyenv").write_text(PYENV)
    (root / "libexec/pyenv").chmod(0o755)
    (repo / ".python-version").write_text("3.12.1\n")
    path = f"{root}/plugins/pyenv-virtualenv/shims:{root}/shims:/usr/bin"
    for environ in ({"PYENV_ROOT": str(root), "PATH": path}, {"PATH": f"{root}/shims:/usr/bin"}):
        r = resolve_path("inherit", repo, environ)
        assert r.path == [f"{version}/bin", "/usr/bin"], environ
        assert r.python == f"{version}/bin/python3" and version in r.binds
        assert r.notes == ["pyenv 3.12.1 instead of its shims"]
    (repo / ".python-version").unlink()  # pyenv selects nothing: shims kept, and said so
    r = resolve_path("inherit", repo, {"PATH": f"{root}/shims:/usr/bin"})
    assert r.path == [f"{root}/shims", "/usr/bin"]
    assert "pyenv shims kept (pyenv prefix: pyenv: no local version)" in r.notes[0]


def test_binds_cover_a_venv_and_its_base_never_the_repository_or_a_home(tmp_path, monkeypatch):
    from ratchetloop.generic.environment import resolve_path

    base, venv, repo, home = (tmp_path / n for n in ("base", "venv", "repo", "home"))
    fake_python(base / "bin")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python3").symlink_to(base / "bin/python3")
    (venv / "pyvenv.cfg").write_text(f"home = {base}/bin\ninclude-system-site-packages = false\n")
    fake_python(repo / "bin")  # its prefix is the repository: binding it would expose .git
    fake_python(home / "bin")  # its prefix is a home: binding it would undo the hiding
    monkeypatch.setenv("HOME", str(home))
    r = resolve_path([f"{venv}/bin", f"{repo}/bin", f"{home}/bin"], repo, {})
    assert sorted(r.binds) == [base, venv]


def test_contract_env_names_and_path_entries_are_checked():
    spec = dict(tag="t", editable=["a.py"], run_command="x")
    assert GenericSpec(**spec, env=["FOO", "BAR_1"]).env == ["FOO", "BAR_1"]
    assert GenericSpec(**spec).path == "inherit"
    for name, why in (("OPENAI_API_KEY", "looks like a secret"), ("db_password", "secret"),
                      ("PATH", "generic.path"), ("HOME", "private"),
                      ("RATCHET_RESULT_FD", "result channel"), ("A-B", "not a variable name")):
        with pytest.raises(ValueError, match=why):
            GenericSpec(**spec, env=["FOO", name])
    with pytest.raises(ValueError, match="must be absolute"):
        GenericSpec(**spec, path=["/bin", "bin"])
    with pytest.raises(ValueError):
        GenericSpec(**spec, path="system")


def test_passed_values_come_from_the_environment_and_secret_values_are_refused(monkeypatch):
    from ratchetloop.errors import RatchetError
    from ratchetloop.generic.environment import passed_values

    secret = "abcdefgh12345678"
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    assert passed_values(["FOO", "UNSET"], {"FOO": "1", "OTHER": "2"}) == {"FOO": "1"}
    with pytest.raises(RatchetError, match="BAR: its value contains") as info:
        passed_values(["FOO", "BAR"], {"FOO": "1", "BAR": f"--auth={secret}"})
    assert secret not in str(info.value)


def test_init_reports_a_bad_contract_field_not_pydantic_boilerplate(tmp_path):
    from generic_helpers import make_repo

    from ratchetloop.errors import RatchetError
    from ratchetloop.generic.cli import init_command

    repo = make_repo(tmp_path)
    with pytest.raises(RatchetError) as info:
        init_command({"tag": "t", "editable": [".git/config"], "run_command": "true",
                      "higher_is_better": False}, cwd=repo)
    assert str(info.value).startswith("field 'generic.editable': '.git/config': use a relative")
    assert "pydantic" not in str(info.value)


def test_a_venv_under_a_hidden_dir_runs_in_the_sandbox_only_with_its_binds(tmp_path):
    """/tmp is a private tmpfs in the sandbox's mount view: the venv is bound back."""
    import subprocess
    import sys

    from ratchetloop.generic.environment import CommandEnv

    venv, work = tmp_path / "v", tmp_path / "work"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    work.mkdir()
    command = ["/bin/sh", "-c", "python3 -c 'import os, sys; print(sys.prefix, os.environ[\"N\"])'"]
    ce = CommandEnv.build([f"{venv}/bin", "/usr/bin", "/bin"], ["N"], None, {"N": "7"})
    proc = sandbox.run(command, cwd=work, timeout=60, env=ce.env, ro_paths=ce.ro_paths)
    assert proc.ok, proc.stderr
    assert proc.stdout.split() == [str(venv), "7"]
    if "mount-namespace" in proc.layers:  # without the binds the venv is not there
        bare = sandbox.run(command, cwd=work, timeout=60, env=ce.env)
        assert str(venv) not in bare.stdout
