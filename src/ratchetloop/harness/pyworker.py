"""One implementation's benchmark worker: loads a candidate under seccomp and calls it on demand.

Run by the trusted driver (harness/python.py), never imported:

    python -I pyworker.py <source.py> <function> <seccomp.py | -> <command fd> <reply fd>

Standard library only, and nothing from the ratchetloop package: `-I` keeps the user
site, PYTHONPATH and the working directory off sys.path (site-packages stay, so a
candidate may import installed libraries; the driver sets OMP_NUM_THREADS and friends to 1
so numerical libraries do not start threads, which the filter would kill). The driver gives
the worker nothing but the two pipes: stdin is /dev/null, stdout and stderr go to a log
file the driver reads only as diagnostics.

Order matters. Before any candidate code exists in this process the worker caps its core
and file sizes, makes itself non-dumpable (no other process of this uid can read its
memory or fds), reads the candidate's source and installs the seccomp filter
(`seccomp.python_worker_policy()`: no threads, processes, signals, timers, sockets, file
writes, CPU affinity changes, ...). Only then is the source compiled and executed, so
module-level candidate code is filtered too. A forbidden call kills the process with
SIGSYS, which the driver sees and reports.

Protocol: one JSON array per line each way.

    worker -> driver  ["ready"]                  candidate loaded, `function` found
                      ["error", stage, summary, traceback]
                                                 stage "seccomp" or "import"; then it waits
                                                 for "quit"
    driver -> worker  ["case", name, [args...]]  -> ["ok"]: remember a case's call arguments
                      ["run", name, reps]        -> ["done"]: call function(*args) reps
                                                 times, each result in its own slot of a
                                                 fresh list; or ["raised", summary, traceback]
                      ["show", [i, j, ...]]      -> ["shown", [value_i, value_j, ...]]: those
                                                 slots of the last run, as JSON (objects with
                                                 .tolist(), e.g. numpy arrays, as lists)
                      ["quit"]                   -> exit at once, no reply

The worker measures and decides nothing: the driver reads this process's CPU time from
outside, picks the slots to show at random after each batch and compares them itself. Any
of this code can be rewritten by the candidate once it is loaded, and the driver assumes
it is.
"""

import json
import os
import resource
import sys
import traceback

LOG_LIMIT = 16 << 20  # bytes the worker may write to its log (RLIMIT_FSIZE)
LINE_LIMIT = 1 << 20  # longest command line accepted


def send(fd, message):
    data = (json.dumps(message, default=plain) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def plain(value):
    """JSON for results that are not JSON types: anything with .tolist() (numpy)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"result of type {type(value).__name__} is not JSON-serialisable")


def summary(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:500]


def commands(fd):
    """Yield each command line from the driver; stop at end of input."""
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            if len(buf) > LINE_LIMIT and b"\n" not in buf:
                return
        line, _, buf = buf.partition(b"\n")
        yield json.loads(line)


def install_filter(seccomp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ratchet_seccomp", seccomp_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the seccomp module from {seccomp_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.set_dumpable(False)
    module.install(module.assemble(module.python_worker_policy()))


def load(source_path, source, function):
    """Execute the candidate as module `candidate`; return its function."""
    import types

    module = types.ModuleType("candidate")
    module.__file__ = source_path
    sys.modules["candidate"] = module
    exec(compile(source, source_path, "exec"), module.__dict__)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise LookupError(f"the candidate defines no function {function!r}")
    return fn


def serve(fn, cmd_fd, reply_fd):
    cases: dict = {}
    results = []
    for command in commands(cmd_fd):
        op = command[0]
        if op == "run":
            args = cases[command[1]]
            reps = int(command[2])
            results = [None] * reps
            try:
                for i in range(reps):
                    results[i] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported, the driver decides
                results = []
                send(reply_fd, ["raised", summary(exc), traceback.format_exc()[-3000:]])
                continue
            send(reply_fd, ["done"])
        elif op == "show":
            try:
                send(reply_fd, ["shown", [results[i] for i in command[1]]])
            except (TypeError, ValueError, IndexError) as exc:
                send(reply_fd, ["raised", summary(exc), ""])
        elif op == "case":
            cases[command[1]] = tuple(command[2])
            send(reply_fd, ["ok"])
        elif op == "quit":
            break
        else:
            break


def main(argv):
    source_path, function, seccomp_path, cmd_fd, reply_fd = argv[1:6]
    cmd_fd, reply_fd = int(cmd_fd), int(reply_fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (LOG_LIMIT, LOG_LIMIT))
    stage = "seccomp"
    try:
        with open(source_path, encoding="utf-8") as f:
            source = f.read()
        if seccomp_path != "-":
            install_filter(seccomp_path)
        stage = "import"
        fn = load(source_path, source, function)
    except BaseException as exc:  # noqa: BLE001 - the candidate's fault, or no seccomp
        send(reply_fd, ["error", stage, summary(exc), traceback.format_exc()[-3000:]])
        for _ in commands(cmd_fd):
            break
        leave()
    send(reply_fd, ["ready"])
    serve(fn, cmd_fd, reply_fd)
    leave()


def leave():
    """Exit without atexit handlers; what the candidate printed goes to the log."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - diagnostics only
            pass
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
