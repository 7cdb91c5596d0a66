"""Is this host quiet enough to time on? Warnings, not refusals, plus CPU pinning.

The acceptance statistics (measure.py) survive noise by taking more rounds, but they cannot
see *why* a host is noisy. This module says it in words that end up in the run record:
load average against usable cores, processes currently eating CPU, a frequency governor
that ramps clocks up and down mid-measurement, turbo boost. All probes read /proc and /sys
and degrade to "unknown" where those are missing (containers, macOS).

`pin_current_process()` pins the caller to one CPU; children started afterwards (the
benchmark binary) inherit it, so the timed code is never migrated between cores mid-round.
Call it after compiling (a pinned compiler is a slow compiler) and before starting the
timing process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

CPU_SYSFS = Path("/sys/devices/system/cpu")
PROC = Path("/proc")
ENV_CPU = "RATCHET_BENCH_CPU"


@dataclass
class Hog:
    pid: int
    name: str
    cpu: float  # fraction of one core over the sample window


@dataclass
class HostReport:
    cores: int
    load1: float | None
    governors: dict[str, int] = field(default_factory=dict)  # governor -> number of CPUs
    boost: str | None = None
    hogs: list[Hog] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def usable_cpus() -> list[int]:
    """CPUs this process may run on (affinity mask, not just the machine's count)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def load_warning(load1: float | None, cores: int, busy_fraction: float = 0.5) -> str | None:
    """Warn when the 1-minute load says other work competes for our cores."""
    if load1 is None:
        return None
    limit = max(1.0, busy_fraction * cores)
    if load1 >= limit:
        return (f"host busy: load average {load1:.2f} on {cores} usable core(s); "
                "timings will be noisy and decisions will need more rounds")
    return None


def governors(root: Path = CPU_SYSFS) -> dict[str, int]:
    """Frequency governors in use, counted over CPUs (empty when not exposed)."""
    counts: dict[str, int] = {}
    for path in sorted(root.glob("cpu[0-9]*/cpufreq/scaling_governor")):
        try:
            gov = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        counts[gov] = counts.get(gov, 0) + 1
    return counts


def boost_state(root: Path = CPU_SYSFS) -> str | None:
    """'on'/'off' for turbo boost where the kernel says (intel_pstate or cpufreq/boost)."""
    try:
        no_turbo = (root / "intel_pstate" / "no_turbo").read_text(encoding="utf-8").strip()
        return "off" if no_turbo == "1" else "on"
    except OSError:
        pass
    try:
        boost = (root / "cpufreq" / "boost").read_text(encoding="utf-8").strip()
        return "on" if boost == "1" else "off"
    except OSError:
        return None


def governor_warnings(govs: dict[str, int], boost: str | None) -> list[str]:
    out = []
    scaling = sorted(g for g in govs if g != "performance")
    if scaling:
        out.append(f"CPU frequency governor {', '.join(scaling)} (not 'performance'): clocks "
                   "change under load; `cpupower frequency-set -g performance` steadies them")
    if boost == "on":
        out.append("turbo boost on: clock depends on temperature and other cores' load")
    return out


def _cpu_ticks(proc: Path) -> dict[int, tuple[str, int]]:
    ticks: dict[int, tuple[str, int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # process exited between listing and reading
        head, _, tail = text.rpartition(")")
        fields = tail.split()
        if len(fields) < 13:
            continue
        name = head.partition("(")[2]
        ticks[int(stat.parent.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def cpu_hogs(
    interval: float = 0.25, threshold: float = 0.3, proc: Path = PROC
) -> list[Hog]:
    """Processes (other than this one) that used > threshold of a core over `interval`."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    before = _cpu_ticks(proc)
    if not before:
        return []
    t0 = time.monotonic()
    time.sleep(interval)  # measuring other processes' CPU use needs a window
    after = _cpu_ticks(proc)
    span = time.monotonic() - t0
    me = os.getpid()
    hogs = []
    for pid, (name, t1) in after.items():
        if pid == me or pid not in before:
            continue
        share = (t1 - before[pid][1]) / hz / span
        if share > threshold:
            hogs.append(Hog(pid, name, round(share, 2)))
    return sorted(hogs, key=lambda h: -h.cpu)


def check_host(sample_seconds: float = 0.25) -> HostReport:
    """Everything above in one report; `warnings` is what a user should read."""
    cores = len(usable_cpus())
    try:
        load1: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    govs = governors()
    boost = boost_state()
    hogs = cpu_hogs(sample_seconds) if sample_seconds > 0 else []
    warnings = [w for w in [load_warning(load1, cores), hog_warning(hogs)] if w]
    warnings += governor_warnings(govs, boost)
    return HostReport(cores, load1, govs, boost, hogs, warnings)


def hog_warning(hogs: list[Hog]) -> str:
    if not hogs:
        return ""
    names = ", ".join(f"{h.name} (pid {h.pid}, {h.cpu:.0%})" for h in hogs[:5])
    return f"other processes using CPU right now: {names}"


def descends_from(pid: int, ancestor: int, proc: Path = PROC) -> bool:
    """Is `pid` a descendant of `ancestor`? Walks parents in /proc (ppid: stat field 4)."""
    for _ in range(64):
        try:
            stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
            pid = int(stat.rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def watch_for_hogs(report: Callable[[str], None]) -> Callable[[], None]:
    """Sample other processes' CPU use in a thread and report a warning when ready, so the
    quarter-second sample is off the path to the first proposal. Processes we start
    meanwhile (the seed's evaluation, a CLI agent) are not "other" load. Returns a wait;
    the thread is not a daemon, so a run shorter than the sample still prints it."""
    me = os.getpid()

    def sample() -> None:
        warning = hog_warning([h for h in cpu_hogs() if not descends_from(h.pid, me)])
        if warning:
            report(warning)

    probe = threading.Thread(target=sample, name="ratchet-host-probe")
    probe.start()
    return probe.join


def choose_cpu(allowed: list[int]) -> int:
    """$RATCHET_BENCH_CPU if allowed, else the highest allowed CPU (CPU 0 takes most IRQs)."""
    wanted = os.environ.get(ENV_CPU, "").strip()
    if wanted.isdigit() and int(wanted) in allowed:
        return int(wanted)
    return max(allowed)


def pin_current_process(cpu: int | None = None) -> int | None:
    """Pin this process (and children started later) to one CPU; the CPU, or None if not allowed.

    Harness wiring: after the builds, before starting the benchmark binary.
    """
    allowed = usable_cpus()
    if not allowed:
        return None
    target = cpu if cpu is not None and cpu in allowed else choose_cpu(allowed)
    try:
        os.sched_setaffinity(0, {target})
    except (AttributeError, OSError):
        return None
    return target

