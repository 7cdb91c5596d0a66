"""Tries to delete, overwrite and append to each path given; creates files next to them."""
import os
import sys
from pathlib import Path


def attempts(p: Path) -> dict:
    return {
        "write": lambda: p.write_text("pwned"),
        "append": lambda: open(p, "a").write("pwned"),
        "chmod": lambda: os.chmod(p, 0o777),
        "delete": lambda: p.unlink(),
        "create": lambda: (p.parent / "pwned.txt").write_text("pwned"),
        "rename": lambda: p.rename(p.with_name("moved")),
    }


for name in sys.argv[1:]:
    p = Path(name)
    for what, act in attempts(p).items():
        try:
            act()
            print(f"{what} {p}: DONE")
        except OSError as exc:
            print(f"{what} {p}: {type(exc).__name__} {exc.errno}")
