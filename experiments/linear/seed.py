"""Fresh search state for the linear experiment: `python experiments/linear/seed.py`.

Resets candidate.c (to naive.c), SCORES, MEMORY and runs/; keeps git history and winners/.
Works from a plain checkout: the repository's src/ is put on sys.path first.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from ratchetloop.seed import main  # noqa: E402  (main = reset + a printed summary)

if __name__ == "__main__":
    main(HERE)
