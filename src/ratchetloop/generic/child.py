"""Run a pickled metric callable in a sandboxed child python: the loop never runs it itself.

    python -m ratchetloop.generic.child <spec.json> <target path>

spec.json: {"pickle": file, "main": script defining __main__ callables or null,
"path": [sys.path entries]}. Prints {"ratchet_metric": value} as its last line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import sys


def main(argv: list[str]) -> int:
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
    print(json.dumps({"ratchet_metric": value}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
