"""Fresh search state for the linear experiment: `python experiments/linear/seed.py`.

Resets candidate.c (to naive.c), SCORES, MEMORY and runs/; keeps git history and winners/.
The same as `ratchet seed linear`. Any python3 will do: one that cannot import ratchetloop
and its dependencies hands over to one that can (the project's .venv, else the `ratchet`
command on PATH, as `pipx install ratchetloop` leaves it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]


def hand_over() -> NoReturn:
    """Re-run with an interpreter that has ratchetloop; one line and exit 2 if none does."""
    venv = PROJECT / ".venv" / "bin" / "python"
    if venv.is_file() and not os.environ.get("RATCHET_SEED_HANDOVER"):
        os.environ["RATCHET_SEED_HANDOVER"] = "1"  # once: a broken .venv must not loop
        os.execv(venv, [str(venv), str(HERE / "seed.py"), *sys.argv[1:]])
    ratchet = shutil.which("ratchet")
    if ratchet:
        os.execv(ratchet, [ratchet, "seed", str(HERE)])
    print(f"error: {sys.executable} cannot import ratchetloop and no `ratchet` is on PATH:"
          " install it (`pip install ratchetloop`) or run this with its python", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    if (PROJECT / "src" / "ratchetloop").is_dir():  # a clone of ratchetloop: its own source
        sys.path.insert(0, str(PROJECT / "src"))
    try:
        from ratchetloop.seed import main  # main = reset + a printed summary
    except (ImportError, SyntaxError):  # no ratchetloop, a dependency missing, an old python
        hand_over()
    main(HERE)
