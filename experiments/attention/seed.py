"""Fresh search state for attention: `python experiments/attention/seed.py`."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from ratchetloop.seed import main  # noqa: E402

if __name__ == "__main__":
    main(HERE)
