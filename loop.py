"""Reference-compatible entry point: `python loop.py linear --model gpt-5.4 --loop 10`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from ratchetloop.cli import legacy_main  # noqa: E402

if __name__ == "__main__":
    legacy_main()
