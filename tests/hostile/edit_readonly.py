"""Tries every way to change the benchmark it is measured by, then reads it back as the
trusted benchmark would: write, append, truncate, chmod, delete, rename, and replacing the
directory that holds the input by a fake one."""
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def attempt(what: str, act: Callable[[], Any]) -> None:
    try:
        act()
        print(f"{what}: DONE")
    except OSError as exc:
        print(f"{what}: {type(exc).__name__} {exc.errno}")


attempt("write bench.py", lambda: Path("bench.py").write_text("SCORE = 1e9\n"))
attempt("append bench.py", lambda: open("bench.py", "a").write("SCORE = 1e9\n"))
attempt("truncate bench.py", lambda: os.truncate("bench.py", 0))
attempt("chmod bench.py", lambda: os.chmod("bench.py", 0o777))
attempt("delete bench.py", lambda: os.unlink("bench.py"))
attempt("rename bench.py", lambda: os.rename("bench.py", "old.py"))
attempt("replace bench.py", lambda: os.replace("fake.py", "bench.py"))
attempt("write data/input.txt", lambda: Path("data/input.txt").write_text("easy"))
attempt("create data/extra.txt", lambda: Path("data/extra.txt").write_text("easy"))
attempt("rename data", lambda: os.rename("data", "data.orig"))
attempt("rmtree data", lambda: shutil.rmtree("data"))
attempt("move deep", lambda: os.rename("deep/er", "deep/moved"))
attempt("write deep/er/input.txt", lambda: Path("deep/er/input.txt").write_text("easy"))
attempt("fake deep", lambda: (os.makedirs("deep2/er"),
                             Path("deep2/er/input.txt").write_text("easy"),
                             os.rename("deep", "deep.orig"), os.rename("deep2", "deep")))
print("bench.py:", Path("bench.py").read_text().strip())
print("input:", Path("data/input.txt").read_text().strip())
print("deep:", Path("deep/er/input.txt").read_text().strip())
