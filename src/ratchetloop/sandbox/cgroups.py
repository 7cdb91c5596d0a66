"""Per-run control groups, v1 and v2: memory and process limits, kill-everything, CPU time.

Which hierarchy provides what is probed once (`available()`): per function (memory, pids,
kill, cpu) the v2 unified hierarchy is preferred when it offers it, else v1. On a hybrid
machine the v1 controllers usually carry memory/pids while the v2 tree still gives
cgroup.kill, cgroup.freeze and cpu.stat. v2 works for a delegated subtree owned by an
ordinary user (systemd's user@.service) as well as for root.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import secrets
import select
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = {"memory": "memory.limit_in_bytes", "pids": "pids.max",
                  "freezer": "freezer.state", "cpuacct": "cpuacct.usage"}
FUNCTIONS = ("memory", "pids", "kill", "cpu")
V1_FOR = {"memory": "memory", "pids": "pids", "kill": "freezer", "cpu": "cpuacct"}
_COUNTER = itertools.count()


@dataclass(frozen=True)
class V2:
    """What the unified hierarchy offers us: where run groups go and which files they have."""

    parent: Path
    kill: bool  # cgroup.kill (Linux 5.14+)
    freeze: bool  # cgroup.freeze
    cpu: bool  # cpu.stat usage_usec
    memory: bool  # memory.max (memory controller enabled for the subtree)
    pids: bool  # pids.max
    note: str = ""  # what we did to get there (enabled controllers, moved into a leaf)


@dataclass(frozen=True)
class Available:
    """The cgroup situation here, probed once."""

    v1: dict[str, Path]  # v1 controller -> the parent dir we may create groups in
    v2: V2 | None
    why_v1: dict[str, str]  # v1 controller -> why it is unusable
    why_v2: str  # why v2 is unusable (or what we did to use it)

    def why_not(self, function: str) -> str:
        """Why neither hierarchy provides `function` here."""
        v1 = self.why_v1.get(V1_FOR[function], "not usable")
        if self.v2 is None:
            v2 = self.why_v2 or "not usable"
        elif function in ("memory", "pids"):
            v2 = (f"the {function} controller is not enabled for {self.v2.parent}"
                  f" ({self.why_v2 or 'not offered to it'})")
        else:
            v2 = f"{self.v2.parent} lacks it (old kernel?)"
        return f"v1 {V1_FOR[function]}: {v1}; v2: {v2}"

    def provider(self, function: str) -> tuple[str, str] | None:
        """('v1' | 'v2', detail) of the mechanism used for one function, or None."""
        v2, v1 = self.v2, self.v1
        if function == "memory":
            if v2 and v2.memory:
                return "v2", f"memory.max in {v2.parent}"
            if "memory" in v1:
                return "v1", f"memory.limit_in_bytes in {v1['memory']}"
        elif function == "pids":
            if v2 and v2.pids:
                return "v2", f"pids.max in {v2.parent}"
            if "pids" in v1:
                return "v1", f"pids.max in {v1['pids']}"
        elif function == "kill":
            if v2 and (v2.kill or v2.freeze):
                how = "cgroup.kill" if v2.kill else "cgroup.freeze + SIGKILL"
                return "v2", f"{how} in {v2.parent}"
            if "freezer" in v1:
                return "v1", f"freezer.state + SIGKILL in {v1['freezer']}"
        elif function == "cpu":
            if v2 and v2.cpu:
                return "v2", f"cpu.stat in {v2.parent}"
            if "cpuacct" in v1:
                return "v1", f"cpuacct.usage in {v1['cpuacct']}"
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _unescape(field_: str) -> str:
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _v1_own(controller: str) -> Path | None:
    """Our own v1 group for `controller` (its mount is /sys/fs/cgroup/<controller>)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            base = CGROUP_ROOT / controller
            path = base / parts[2].lstrip("/")
            return path if path.is_dir() else (base if base.is_dir() else None)
    return None


def v2_mount() -> Path | None:
    """Where the unified hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(_unescape(left.split()[4]))
    return None


def v2_own() -> Path | None:
    """Our own v2 group, from the `0::/path` line of /proc/self/cgroup."""
    mount = v2_mount()
    if mount is None:
        return None
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        if line.startswith("0::"):
            path = mount / line[3:].strip().lstrip("/")
            return path if path.is_dir() else None
    return None


def _probe_dir(parent: Path) -> Path:
    return parent / f"ratchet-probe-{os.getpid()}-{secrets.token_hex(4)}"


def _probe_v1() -> tuple[dict[str, Path], dict[str, str]]:
    found: dict[str, Path] = {}
    why: dict[str, str] = {}
    for controller, probe_file in V1_CONTROLLERS.items():
        parent = _v1_own(controller)
        if parent is None:
            why[controller] = f"not mounted at {CGROUP_ROOT / controller}"
            continue
        probe = _probe_dir(parent)
        try:
            probe.mkdir()
        except OSError as exc:
            why[controller] = f"cannot create groups in {parent} ({exc.strerror})"
            continue
        try:
            if (probe / probe_file).exists():
                found[controller] = parent
            else:
                why[controller] = f"{probe_file} missing in {parent}"
        finally:
            _rmdir_tree(probe)
    return found, why


def _enable_v2_controllers(own: Path) -> tuple[set[str], str]:
    """Enable memory/pids for our subtree when we may; (enabled, note).

    The "no internal processes" rule forbids enabling them while processes live in `own`:
    if the only process there is us, we move ourselves into a leaf first.
    """
    offered = set(_read(own / "cgroup.controllers").split())
    enabled = set(_read(own / "cgroup.subtree_control").split())
    want = [c for c in ("memory", "pids") if c in offered and c not in enabled]
    if not want:
        return enabled, ""
    text = " ".join(f"+{c}" for c in want)
    try:
        (own / "cgroup.subtree_control").write_text(text)
        return enabled | set(want), f"enabled {','.join(want)} in {own}"
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            return enabled, f"cannot enable {','.join(want)} in {own}: {exc.strerror}"
    procs = _read(own / "cgroup.procs").split()
    if procs != [str(os.getpid())]:
        return enabled, (f"cannot enable {','.join(want)} in {own}: other processes live "
                         "there (no internal processes rule)")
    leaf = own / f"ratchet-self-{os.getpid()}"
    try:
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        return enabled, f"cannot move into a leaf {leaf}: {exc.strerror}"
    try:
        (own / "cgroup.subtree_control").write_text(text)
        return enabled | set(want), f"moved ourselves into {leaf.name}, enabled {','.join(want)}"
    except OSError as exc:
        _write(own / "cgroup.procs", str(os.getpid()))
        _rmdir_tree(leaf)
        return enabled, f"cannot enable {','.join(want)} in {own}: {exc.strerror}"


def _probe_v2() -> tuple[V2 | None, str]:
    own = v2_own()
    if own is None:
        where = v2_mount()
        return None, ("no cgroup2 hierarchy mounted" if where is None else
                      f"our v2 group is not visible under {where}")
    _, note = _enable_v2_controllers(own)
    probe = _probe_dir(own)
    try:
        probe.mkdir()
    except OSError as exc:
        return None, f"cannot create groups in {own} ({exc.strerror}; not delegated to us?)"
    try:
        has = {name: (probe / name).exists() for name in
               ("cgroup.kill", "cgroup.freeze", "cpu.stat", "memory.max", "pids.max")}
    finally:
        _rmdir_tree(probe)
    v2 = V2(parent=own, kill=has["cgroup.kill"], freeze=has["cgroup.freeze"],
            cpu=has["cpu.stat"], memory=has["memory.max"], pids=has["pids.max"], note=note)
    return v2, note


@functools.cache
def available() -> Available:
    """Probe v1 and v2 once per process."""
    v1, why_v1 = _probe_v1()
    v2, why_v2 = _probe_v2()
    return Available(v1=v1, v2=v2, why_v1=why_v1, why_v2=why_v2)


@dataclass
class RunGroup:
    """The groups of one run, created from `available()`; best effort, never fatal."""

    memory_bytes: int | None  # None: no memory limit
    processes: int
    avail: Available
    name: str = field(default_factory=lambda: (
        f"ratchet-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}"))
    v1: dict[str, Path] = field(default_factory=dict)
    v2: Path | None = None
    used: dict[str, str] = field(default_factory=dict)  # function -> "v1" | "v2"
    problems: list[tuple[str, str]] = field(default_factory=list)  # (function, what failed)

    def __post_init__(self) -> None:
        plan = {f: p[0] for f in FUNCTIONS if (p := self.avail.provider(f))}
        if "v2" in plan.values() and self.avail.v2 is not None:
            parent = self.avail.v2.parent
            sweep_stale(parent)
            try:
                (parent / self.name).mkdir()
                self.v2 = parent / self.name
            except OSError as exc:
                self.problems += [(f, f"v2: cannot create {parent / self.name}: {exc.strerror}")
                              for f, v in plan.items() if v == "v2"]
        for function, version in plan.items():
            if version == "v1" or (version == "v2" and self.v2 is None):
                controller = V1_FOR[function]
                parent_v1 = self.avail.v1.get(controller)
                if parent_v1 is None or controller in self.v1:
                    continue
                sweep_stale(parent_v1)
                try:
                    (parent_v1 / self.name).mkdir()
                    self.v1[controller] = parent_v1 / self.name
                except OSError as exc:
                    self.problems.append((function, f"v1 {controller}: cannot create a "
                                                    f"group: {exc.strerror}"))
        for function, version in plan.items():
            if version == "v2" and self.v2 is not None:
                self.used[function] = "v2"
            elif V1_FOR[function] in self.v1:
                self.used[function] = "v1"
        self._set_limits()

    def _set_limits(self) -> None:
        mem_bytes, procs = self.memory_bytes, self.processes
        writes: list[tuple[Path, str]] = []
        if self.used.get("memory") == "v2" and self.v2 and mem_bytes is not None:
            writes += [(self.v2 / "memory.max", str(mem_bytes)),
                       (self.v2 / "memory.swap.max", "0")]
        elif self.used.get("memory") == "v1" and mem_bytes is not None:
            mem = self.v1["memory"]
            writes += [(mem / "memory.limit_in_bytes", str(mem_bytes)),
                       (mem / "memory.memsw.limit_in_bytes", str(mem_bytes))]
        if self.used.get("pids") == "v2" and self.v2:
            writes.append((self.v2 / "pids.max", str(procs)))
        elif self.used.get("pids") == "v1":
            writes.append((self.v1["pids"] / "pids.max", str(procs)))
        for path, value in writes:
            if not path.exists() and path.name in ("memory.swap.max",
                                                   "memory.memsw.limit_in_bytes"):
                continue  # no swap accounting here: the plain limit is all there is
            try:
                path.write_text(value)
            except OSError as exc:
                function = "memory" if "mem" in path.name else "pids"
                self.used.pop(function, None)
                self.problems.append((function, f"writing {path}: {exc.strerror}"))

    @property
    def dirs(self) -> list[Path]:
        return [*self.v1.values(), *([self.v2] if self.v2 else [])]

    def layers(self) -> list[str]:
        """Layer names (as in describe_layers) this run really has."""
        return [f"cgroup-{f}" for f in FUNCTIONS if f in self.used]

    def join_self(self) -> None:
        """In the child before exec (preexec_fn): it and all its descendants join the groups."""
        self.join(os.getpid())

    def join(self, pid: int) -> None:
        """Move `pid` into the groups (before it starts anything: children inherit them)."""
        for path in self.dirs:
            with open(path / "cgroup.procs", "w") as fh:
                fh.write(str(pid))

    def members(self) -> set[int]:
        """Every process in our groups, sub-groups included."""
        found: set[int] = set()
        for top in self.dirs:
            for sub, _, _ in os.walk(top):
                found.update(int(x) for x in _read(Path(sub) / "cgroup.procs").split())
        return found

    def kill_all(self, deadline: float, spare: int | None = None) -> bool:
        """Kill every process of the run however it detached; True once the groups are empty.

        `spare`: a process that stays (a warm sandbox's zygote, which lives in the groups
        its commands inherit): everything else is frozen, killed and waited for.
        """
        if not self.dirs:
            return True
        if spare is not None:
            return self._kill_all_but(spare, deadline)
        v2 = self.v2 if self.used.get("kill") == "v2" else None
        frz = self.v1.get("freezer") if self.used.get("kill") == "v1" else None
        while True:
            if v2 is not None and (v2 / "cgroup.kill").exists():
                _write(v2 / "cgroup.kill", "1")  # the kernel kills the whole subtree at once
            elif v2 is not None:
                _write(v2 / "cgroup.freeze", "1")
                _wait_events(v2, b"frozen 1", deadline)
            if frz is not None:
                self._freeze_v1(frz, deadline)
            members = self.members()
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if v2 is not None and not (v2 / "cgroup.kill").exists():
                _write(v2 / "cgroup.freeze", "0")
            if frz is not None:
                _write(frz / "freezer.state", "THAWED")
            if v2 is not None:
                _wait_events(v2, b"populated 0", deadline)
            if not self.members():
                return True
            if time.monotonic() > deadline:
                self.problems.append(("kill", f"processes left in {self.dirs} after the kill"))
                return False
            time.sleep(0.005)  # v1 groups have no "empty" event

    def _freeze_v1(self, frz: Path, deadline: float) -> None:
        _write(frz / "freezer.state", "FROZEN")
        while time.monotonic() < deadline and _read(frz / "freezer.state").strip() != "FROZEN":
            time.sleep(0.002)  # v1 freezer has no event to wait on

    def _kill_all_but(self, spare: int, deadline: float) -> bool:
        """kill_all() for groups a process of ours stays in (so no cgroup.kill, and no
        "populated 0" event): freeze, SIGKILL the rest, thaw, until only `spare` is left."""
        v2 = self.v2 if self.used.get("kill") == "v2" else None
        frz = self.v1.get("freezer") if self.used.get("kill") == "v1" else None
        while True:
            if not self.members() - {spare}:
                return True
            if v2 is not None:
                _write(v2 / "cgroup.freeze", "1")
                _wait_events(v2, b"frozen 1", deadline)
            if frz is not None:
                self._freeze_v1(frz, deadline)
            for pid in self.members() - {spare}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if v2 is not None:
                _write(v2 / "cgroup.freeze", "0")
            if frz is not None:
                _write(frz / "freezer.state", "THAWED")
            if not self.members() - {spare}:
                return True
            if time.monotonic() > deadline:
                self.problems.append(("kill", f"processes left in {self.dirs} after the kill"))
                return False
            time.sleep(0.002)  # dying processes leave the groups a moment later

    def cpu_seconds(self) -> float | None:
        """User+system CPU of everything that ran in the group (the init included)."""
        if self.used.get("cpu") == "v2" and self.v2 is not None:
            m = re.search(r"^usage_usec (\d+)", _read(self.v2 / "cpu.stat"), re.M)
            return int(m.group(1)) / 1e6 if m else None
        if self.used.get("cpu") == "v1":
            text = _read(self.v1["cpuacct"] / "cpuacct.usage").strip()
            return int(text) / 1e9 if text.isdigit() else None
        return None

    def oom_killed(self) -> bool:
        return self.oom_count() > 0

    def oom_count(self) -> int:
        """OOM kills in the group so far (v1 without oom_kill: times the limit was hit)."""
        if self.used.get("memory") == "v2" and self.v2 is not None:
            m = re.search(r"^oom_kill (\d+)", _read(self.v2 / "memory.events"), re.M)
            return int(m.group(1)) if m else 0
        mem = self.v1.get("memory")
        if mem is None:
            return 0
        m = re.search(r"^oom_kill (\d+)", _read(mem / "memory.oom_control"), re.M)
        if m:
            return int(m.group(1))
        failcnt = _read(mem / "memory.failcnt").strip()
        return int(failcnt) if failcnt.isdigit() else 0

    def remove(self) -> None:
        for path in self.dirs:
            _rmdir_tree(path)


def _wait_events(group: Path, want: bytes, deadline: float) -> bool:
    """Block until cgroup.events shows `want` (the kernel notifies pollers of changes)."""
    try:
        fd = os.open(group / "cgroup.events", os.O_RDONLY)
    except OSError:
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI)
        while want not in os.pread(fd, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(left * 1000)
        return True
    finally:
        os.close(fd)


def _rmdir_tree(path: Path) -> None:
    """rmdir a group and its sub-groups, deepest first (fails harmlessly while populated)."""
    for sub, _dirs, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):
        try:
            os.rmdir(sub)
        except OSError:
            pass


def sweep_stale(parent: Path) -> None:
    """Remove empty groups left by sandbox callers that died (their pid is gone)."""
    try:
        entries = [p for p in parent.iterdir() if p.name.startswith("ratchet-")]
    except OSError:
        return
    for path in entries:
        parts = path.name.split("-")
        owner = parts[2] if parts[1] in ("self", "probe", "warm") and len(parts) > 2 else parts[1]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _rmdir_tree(path)
