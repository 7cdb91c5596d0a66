"""Is a run going on, and where is it? `ratchet status` reads it from files the run writes.

Two files say it: the run lock's holder (lock.py: pid, host, purpose, since), which exists
exactly while a process holds the experiment, and .ratchet.status.json, which the run's
reporter (display.LiveReporter) rewrites at every phase change: iteration k of N, the
phase, timing progress, best so far, tokens and cost, and at the end when and why it
stopped. status.json is a view, written atomically without fsync (files.py): a power cut
may lose its newest version, never corrupt it. A status that says "running" while its pid
is gone is a run that died without finishing (killed, power cut); status says so and when
it was last seen. Nothing here imports the loop: `ratchet status` stays cheap.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .display import clock_text as clock
from .errors import RatchetError
from .files import atomic_write_json

STATUS_FILE = ".ratchet.status.json"  # a dot file: never staged for eval.py, never committed
HOLDER_FILE = ".ratchet.lock.holder"


def status_path(folder: Path) -> Path:
    return folder / STATUS_FILE


@dataclass
class TimingProgress:
    """Where the paired timing of the current candidate stands (running estimate)."""

    rounds: int
    max_rounds: int
    ratio: float | None = None  # candidate / incumbent so far (lower-is-better terms)
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str = ""


@dataclass
class RunStatus:
    """What .ratchet.status.json holds; the reporter updates it, `ratchet status` reads it."""

    experiment: str
    proposer: str
    total: int  # iterations asked for in this run
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    state: str = "running"  # running | finished
    iteration: int = 0  # attempt number (runs/<n>); 0 while setting up
    k: int = 0  # position of that attempt in this run, 1..total
    done: int = 0  # attempts finished in this run
    phase: str = "starting"
    timing: TimingProgress | None = None
    best: str = ""
    tokens: int = 0
    cost: str = ""
    stopped: float | None = None
    stop_reason: str = ""

    def save(self, folder: Path) -> None:
        self.updated = time.time()
        atomic_write_json(status_path(folder), asdict(self), durable=False)


def read_status(folder: Path) -> dict[str, Any] | None:
    """.ratchet.status.json as a dict, or None when absent or unreadable (never an error: it is
    a view, and an older or newer version's fields are shown as far as they are known)."""
    try:
        data = json.loads(status_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    except (OverflowError, ValueError):
        return False
    return True


def holder(folder: Path) -> dict[str, Any] | None:
    """The lock holder, if a live process on this host holds the experiment now."""
    try:
        h = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(h, dict) or not isinstance(h.get("pid"), int):
        return None
    if h.get("host") not in (None, socket.gethostname()):
        return h  # another host's process: we cannot check it, so take the lock's word
    return h if pid_alive(h["pid"]) else None


def when(epoch: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if isinstance(
        epoch, (int, float)) else "?"


def timing_text(t: Any) -> str:
    if not isinstance(t, dict):
        return ""
    text = f"timing {t.get('rounds', '?')}/{t.get('max_rounds', '?')} rounds"
    ratio = t.get("ratio")
    if isinstance(ratio, (int, float)):
        text += f", ratio {ratio:.3f}"
        lo, hi = t.get("ci_low"), t.get("ci_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            text += f" [{lo:.3f}, {hi:.3f}]"
    if t.get("verdict"):
        text += f" ({t['verdict']})"
    return text


def describe(folder: Path, name: str | None = None, now: float | None = None) -> list[str]:
    """Lines for `ratchet status <experiment>`."""
    name = name or folder.name
    now = time.time() if now is None else now
    h = holder(folder)
    st = read_status(folder)
    same_run = st is not None and h is not None and st.get("pid") == h.get("pid")
    if h is not None and not same_run:
        what = h.get("purpose", "?")
        return [f"{name}: busy (pid {h['pid']}, {what}, since {h.get('since', '?')})"
                + ("" if what != "run" else "; no status written yet")]
    if st is None:
        return [f"{name}: not running; no run recorded (.ratchet.status.json absent)"]
    k, total = st.get("k", "?"), st.get("total", "?")
    where = f"iteration {k}/{total}" if st.get("iteration") else "setup"
    usage = f"usage: {st.get('tokens', 0)} tokens, {st.get('cost') or 'cost unknown'}"
    best = f"best: {st.get('best') or 'seed'}"
    if same_run:
        assert h is not None
        started = st.get("started")
        elapsed = clock(now - started) if isinstance(started, (int, float)) else "?"
        attempt = f" (attempt #{st['iteration']})" if st.get("iteration") else ""
        lines = [f"{name}: running (pid {h['pid']}, {st.get('proposer', '?')},"
                 f" elapsed {elapsed})", f"{where}{attempt}: {st.get('phase', '?')}"]
        timing = timing_text(st.get("timing"))
        if timing:
            lines.append(timing)
        return lines + [best, usage]
    if st.get("state") == "finished":
        head = (f"{name}: not running; the last run (pid {st.get('pid', '?')}) stopped at"
                f" {when(st.get('stopped'))}: {st.get('stop_reason') or 'finished'}")
    else:
        head = (f"{name}: not running; the last run (pid {st.get('pid', '?')}) stopped without"
                f" finishing (its process is gone), last seen at {when(st.get('updated'))}"
                f" in {where}: {st.get('phase', '?')}")
    return [head, f"{st.get('done', '?')} of {total} iterations done; {best}; {usage}"]


def project_experiments(start: Path | None = None) -> list[Path]:
    """Experiment folders of the project around `start` (cwd): the nearest folder, going
    up to the git work tree's top, with experiments/<name>/ or .ratchet/<tag>/ contracts;
    else those under --root / $RATCHET_ROOT (as experiment.find_experiment_dir looks)."""
    here = (start or Path.cwd()).resolve()
    bases: list[Path] = []
    for base in [here, *here.parents]:
        bases.append(base)
        if (base / ".git").exists():
            break
    else:
        bases = [here]
    root = os.environ.get("RATCHET_ROOT")
    if root:
        bases.append(Path(root).expanduser().resolve())
    for base in bases:
        found = sorted(p.parent for pattern in ("experiments/*/experiment.json",
                                                ".ratchet/*/experiment.json")
                       for p in base.glob(pattern))
        if found:
            return found
    raise RatchetError(f"no experiments in {here} or the project around it"
                       " (experiments/<name>/experiment.json or .ratchet/<tag>/experiment.json;"
                       " --root DIR names another project)")


def overview(start: Path | None = None) -> list[str]:
    """One line per experiment of the project: `ratchet status` without an argument."""
    return [describe(folder)[0] for folder in project_experiments(start)]
