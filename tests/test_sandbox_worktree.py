"""Generic mode's per-run directories (generic/worktree.py) with the sandbox: a run dir is
reused for its implementation's next run only while provably untouched.

Worktrees.fresh + sandbox run + changed_readonly + discard is the whole per-run path of
generic mode. These tests tamper with a run dir in every way a run could if it could write
it (the sandbox's private view says it cannot) and check that the next fresh() is a clean
base + files again; and they run hostile commands through the real sandbox, cold and warm.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ratchetloop import sandbox
from ratchetloop.generic import worktree
from ratchetloop.generic.worktree import Worktrees

VIEW = sandbox.private_work_view()
FILES = {"value.txt": "1000\n", "score.sh": "#!/bin/sh\ncat value.txt\n",
         "src/mod.py": "x = 1\n", "src/pkg/deep.py": "y = 2\n"}


@pytest.fixture
def trees(tmp_path: Path) -> Worktrees:
    repo = tmp_path / "repo"
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / "link").symlink_to("value.txt")
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    t = Worktrees(repo, "t", tmp_path)
    t.prepare(["value.txt"], ["score.sh"])
    return t


def tree(root: Path) -> dict[str, str]:
    """Every path under root: file text, 'dir', 'link -> target' or 'other' (never opens
    a fifo: a regression fails instead of hanging)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = (f"link -> {os.readlink(p)}" if p.is_symlink() else
                    "dir" if p.is_dir() else p.read_text() if p.is_file() else "other")
    return out


def expected(value: str) -> dict[str, str]:
    return {"link": "link -> value.txt", "score.sh": FILES["score.sh"], "src": "dir",
            "src/mod.py": "x = 1\n", "src/pkg": "dir", "src/pkg/deep.py": "y = 2\n",
            "value.txt": value}


def runs_left(trees: Worktrees) -> list[str]:
    runs = trees.root / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


needs_view = pytest.mark.skipif(not VIEW, reason="no private work view here: run dirs are "
                                "never reused")


@needs_view
def test_an_untouched_run_dir_is_reused_with_only_its_files_rewritten(
        trees: Worktrees) -> None:
    first = trees.fresh("candidate", {"value.txt": "900\n"})
    inode = os.lstat(first / "src" / "mod.py").st_ino
    trees.discard(first)
    assert runs_left(trees) == [] and (trees.keep / "candidate").is_dir()
    again = trees.fresh("candidate", {"value.txt": "800\n"})
    assert again == first and tree(again) == expected("800\n")
    assert os.lstat(again / "src" / "mod.py").st_ino == inode  # reused, not copied
    assert not (trees.keep / "candidate").exists()
    trees.discard(again)
    other = trees.fresh("best", {"value.txt": "700\n"})  # each implementation its own dir
    assert tree(other) == expected("700\n")
    assert tree(trees.fresh("candidate", {"value.txt": "800\n"})) == expected("800\n")


def _write(d: Path) -> None:
    (d / "src" / "mod.py").write_text("x = 9\n")


def _same_size_same_mtime(d: Path) -> None:
    target = d / "src" / "mod.py"
    st = os.stat(target)
    target.write_text("x = 9\n")  # same length
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _plant(d: Path) -> None:
    (d / ".git").mkdir()
    (d / ".git" / "config").write_text("[core]\n\thooksPath = /tmp/evil\n")


def _chmod(d: Path) -> None:
    os.chmod(d / "score.sh", 0o777)


def _relink(d: Path) -> None:
    (d / "link").unlink()
    (d / "link").symlink_to("/etc/passwd")


def _hardlink_out(d: Path) -> None:
    os.link(d / "src" / "mod.py", d.parent.parent / "stolen")


def _replace_dir(d: Path) -> None:
    os.rename(d / "src" / "pkg", d / "pkg.old")
    (d / "src" / "pkg").mkdir()
    os.rename(d / "pkg.old" / "deep.py", d / "src" / "pkg" / "deep.py")
    (d / "pkg.old").rmdir()


def _fifo(d: Path) -> None:
    (d / "src" / "pkg" / "deep.py").unlink()
    os.mkfifo(d / "src" / "pkg" / "deep.py")


TAMPER: dict[str, Callable[[Path], None]] = {
    "write": _write, "same-size-same-mtime": _same_size_same_mtime, "plant-git": _plant,
    "chmod": _chmod, "relink": _relink, "hardlink-out": _hardlink_out,
    "replace-dir": _replace_dir, "fifo": _fifo}


@pytest.fixture(params=["during-the-run", "while-parked"])
def when(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


@needs_view
@pytest.mark.parametrize("how", list(TAMPER))
def test_a_touched_run_dir_is_never_reused(trees: Worktrees, how: str, when: str) -> None:
    d = trees.fresh("candidate", {"value.txt": "900\n"})
    if when == "during-the-run":
        TAMPER[how](d)
        trees.discard(d)
        assert not (trees.keep / "candidate").exists()  # deleted, not parked
    else:
        trees.discard(d)
        TAMPER[how](trees.keep / "candidate")
    again = trees.fresh("candidate", {"value.txt": "900\n"})
    assert tree(again) == expected("900\n")
    assert not (again / ".git").exists() and os.stat(again / "score.sh").st_mode & 0o777 != 0o777
    assert runs_left(trees) == ["candidate"]


def test_without_a_private_view_every_run_dir_is_a_fresh_copy(
        trees: Worktrees, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worktree.sandbox, "private_work_view", lambda: False)
    d = trees.fresh("candidate", {"value.txt": "900\n"})
    inode = os.lstat(d / "src" / "mod.py").st_ino
    trees.discard(d)
    assert runs_left(trees) == [] and not trees.keep.exists()
    again = trees.fresh("candidate", {"value.txt": "900\n"})
    assert os.lstat(again / "src" / "mod.py").st_ino != inode or not trees.keep.exists()
    assert tree(again) == expected("900\n")


@needs_view
def test_a_new_pristine_export_drops_parked_dirs(trees: Worktrees) -> None:
    trees.discard(trees.fresh("candidate", {"value.txt": "900\n"}))
    assert (trees.keep / "candidate").is_dir()
    trees.prepare(["value.txt"], ["score.sh"])  # a new session
    assert not trees.keep.exists()
    assert tree(trees.fresh("candidate", {"value.txt": "900\n"})) == expected("900\n")


HOSTILE = r"""
set +e
echo hacked > src/mod.py; echo planted > planted.txt; mkdir -p .git; echo x > .git/config
chmod 777 score.sh; rm -f link; ln -s /etc/passwd link; echo cost=0 > score.sh
mkfifo fifo; ln src/pkg/deep.py hard
cat value.txt
"""


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_generic_per_run_path_with_hostile_commands(trees: Worktrees, start: str) -> None:
    """fresh + sandbox run + changed_readonly + discard, as generic mode does it, round
    after round: whatever the command tries, the next run sees base + its files only."""
    box = sandbox.Warm()
    runner = box.run if start == "warm" else sandbox.run
    try:
        for value in ("900\n", "800\n", "700\n"):
            for impl in ("candidate", "best"):
                cwd = trees.fresh(impl, {"value.txt": value})
                assert tree(cwd) == expected(value)
                res = runner(["/bin/sh", "-c", HOSTILE], cwd=cwd, timeout=30,
                             result_channel=True, artefacts=(), readonly_inside=["score.sh"])
                assert res.error is None and value in res.stdout, res.stderr
                assert res.warm == (start == "warm" and box.cold_why is None)
                changed = trees.changed_readonly(cwd)
                if VIEW:
                    assert changed == [] and tree(cwd) == expected(value)
                trees.discard(cwd)
                assert runs_left(trees) == []
    finally:
        box.close()
