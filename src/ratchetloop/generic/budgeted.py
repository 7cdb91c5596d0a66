"""Run a command under a fixed time budget, inside the sandbox (generic/trialtime.py
passes this file's source with -c, as the sandbox may hide the installed package):

    python -I -c <this source> <seconds> <shell command>

The command runs in its own process group. At the budget the whole group gets SIGTERM and
this waits until every process of the group is gone -- a training script that catches
SIGTERM can still evaluate and report -- then exits 124 (as coreutils `timeout` does; a
shell in between would otherwise die first and take the reporting process with it when
the sandbox ends the tree). The sandbox's own timeout (budget + grace) kills whatever
ignores SIGTERM. Standard library only: it starts in every run that has a budget.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

TIMED_OUT = 124
POLL = 0.02  # seconds between looks at a stopping group (the only way to watch a group)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    seconds, command = float(argv[0]), argv[1]
    fd = os.environ.get("RATCHET_RESULT_FD", "")
    proc = subprocess.Popen(["/bin/sh", "-c", command], start_new_session=True,
                            pass_fds=(int(fd),) if fd.isdigit() else ())
    try:
        code = proc.wait(timeout=seconds)
        return code if code >= 0 else 128 - code
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait()
    while group_alive(proc.pid):
        time.sleep(POLL)
    return TIMED_OUT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
