"""Reference-compatible entry point: `python loop.py linear --model gpt-5.4 --loop 10`."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "src"))
# This script belongs to the clone it sits in: its experiments are the ones it runs, also
# when started from another directory (the `ratchet` command never looks there by itself).
os.environ.setdefault("RATCHET_ROOT", str(HERE))

from ratchetloop.cli import legacy_main  # noqa: E402

if __name__ == "__main__":
    legacy_main()
