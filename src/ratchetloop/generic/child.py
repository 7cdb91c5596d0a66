"""Run a pickled metric callable in a sandboxed child python: the loop never runs it itself.

    python -m ratchetloop.generic.child <spec.json> <target path>

spec.json: {"pickle": file, "main": script defining __main__ callables or null,
"path": [sys.path entries]}. The value goes to the sandbox's result channel (the fd in
$RATCHET_RESULT_FD) as one number, never to stdout: whatever the metric or the candidate
code it runs prints cannot become the metric. Before importing anything of the user's the
child moves the channel off fd 3 to a descriptor that is not inherited and removes the
variable, so candidate code that writes to fd 3 -- or to $RATCHET_RESULT_FD -- reaches
nothing. Code in this process can still find the descriptor (/proc/self/fd); a second
value written there makes the run an `integrity` failure (contract.read_channel).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import sys


def take_channel() -> int:
    """The result channel moved to a private, non-inheritable descriptor."""
    name = os.environ.pop("RATCHET_RESULT_FD", "")
    if not name.isdigit():
        raise SystemExit("ratchetloop.generic.child: no result channel ($RATCHET_RESULT_FD);"
                         " it only runs inside the loop's sandbox")
    fd = int(name)
    private = os.dup(fd)  # dup() descriptors are close-on-exec
    os.close(fd)
    return private


def main(argv: list[str]) -> int:
    channel = take_channel()
    spec = json.loads(open(argv[0], encoding="utf-8").read())
    sys.path[:0] = [p for p in spec.get("path", []) if p not in sys.path]
    os.environ["RATCHET_METRIC_CHILD"] = "1"  # Loop.run() refuses to start in here
    if spec.get("main"):
        # The user's script, imported under another name so its `if __name__ ==
        # "__main__":` block does not run, then standing in for __main__ while unpickling.
        module_spec = importlib.util.spec_from_file_location("__ratchet_main__", spec["main"])
        assert module_spec and module_spec.loader
        module = importlib.util.module_from_spec(module_spec)
        sys.modules["__ratchet_main__"] = module
        module_spec.loader.exec_module(module)
        sys.modules["__main__"] = module
    with open(spec["pickle"], "rb") as fh:
        metric = pickle.load(fh)
    value = float(metric(argv[1]))
    if not math.isfinite(value):
        print(f"the metric returned {value}", file=sys.stderr)
        return 3
    os.write(channel, f"{value!r}\n".encode("ascii"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
