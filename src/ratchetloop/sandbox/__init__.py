"""Run untrusted work (a candidate's build, validation and timing) in a contained child.

Candidate code is hostile. `run()` starts it as a tree of processes of its own, enforces
limits, kills the whole tree when it is done or out of time, and never raises for anything
the child does. Which layers are active depends on the machine: `describe_layers()` says,
per layer, whether it is active here and why not (``ratchet doctor`` prints it), and
`missing_layers()` lists the important ones that are off (the loop prints them).

Modules: `runner` (parent side: `run`, `Limits`, `SandboxResult`), `warm` (`Warm`: the same
run without a cold start), `init` (the stdlib-only init, run by file path inside the
namespaces; also the warm sandbox's server), `probe` (what works here; layer report),
`cgroups` (v1 and v2), `env` (allow-list, secret scrubbing, where homes and keys are).

Cold and warm. `run()` starts `unshare` and a new Python init per command: tens of
milliseconds before the command starts. `Warm()` (a context manager; `Warm().run` takes
run's arguments and returns its result) starts one init in server mode (the zygote, outside
any namespace, never running anything itself) and forks, per command, a half that does what
`unshare` does (fresh user (non-root callers), pid, net, ipc, uts and mount namespaces)
and then the same init as pid 1 of them: every layer below applies per command exactly as
on the cold path, except that the cgroups are the zygote's (see cgroups). Nothing of one
command reaches the next: not its processes (its pid namespace dies with its init; then
the groups are emptied and checked), files (its view is gone), SysV IPC, sockets, keyrings
(non-root) or result fd. Where the warm path is impossible (`isolate=False`, no pid or
mount namespace, no pidfds) or fails, `Warm.run` is a cold `run()` (`SandboxResult.warm`).

Layers, outermost first (each optional, probed once, used when it works):

* cgroups, per function the v2 unified hierarchy when it offers it, else v1 (root, or a
  delegated subtree, e.g. systemd's user@.service for v2). memory: a hard limit on resident
  memory + page cache + tmpfs (OOM kill inside the group, not the machine; ASan's huge
  shadow *reservation* is fine, unlike RLIMIT_AS). pids: a process-count limit (RLIMIT_NPROC
  does not apply to root). kill: at the end v2 cgroup.kill (or freeze + SIGKILL, or the v1
  freezer) and run() waits until the group is empty, so nothing that double-forked,
  setsid()ed or re-parented itself survives. cpu: the tree's CPU time (v2 cpu.stat, v1
  cpuacct). For v2, memory/pids are enabled in our group's subtree_control when we may
  (moving ourselves into a leaf if we are the only process there). Warm: moving a process
  into a group costs an RCU grace period (~10 ms here), so a warm sandbox's commands
  inherit the groups its zygote sits in (one set per `Limits` memory/process pair): the
  limits cover the zygote (~15 MB, 1 process) plus the one command running; after each
  command everything but the zygote is frozen, SIGKILLed and waited for (never
  cgroup.kill: it would take the zygote); CPU time and OOM kills are per-command deltas.
* `unshare` namespaces (util-linux; as non-root with --user --map-root-user where
  unprivileged user namespaces are allowed): pid (own pid 1, our init; when it dies the
  kernel kills the whole namespace; nothing outside is visible or signalable), net (no
  network at all, not even the host's 127.0.0.1), ipc, uts, and mount: everything is
  remounted read-only; /tmp, /dev/shm and /run are fresh private tmpfs; /dev is minimal
  (null, zero, full, random, urandom, tty); /proc is the namespace's own; $HOME (and the
  account's passwd home) are hidden behind an empty tmpfs *wherever the work dir is*, with
  only the Python installation, `ro_paths`, PYTHONPATH entries, argv[0]'s directory and
  the work dir bound back (never a home or its ancestor: that would undo the hiding); the
  keys file (RATCHET_KEYS_FILE, ~/.config/ratchetloop/keys.json) is covered by an empty
  read-only file wherever it is still visible. The work dir is a private writable view,
  size-capped by `Limits.work_bytes` and discarded at exit: overlayfs (lower = the real
  dir, upper in a tmpfs; O(1)) or, where overlay is not allowed, a tmpfs copy (its staging
  tmpfs, holding only the run's own writes, is covered by an empty read-only tmpfs, not
  lazily unmounted, which waits for an RCU grace period on every run: an empty
  /dev/.ratchet-stage stays visible; the writable handle on the real dir that artefacts
  need is still detached outright). Nothing
  written there flows back except declared `artefacts`: top-level regular files with plain
  names ([A-Za-z0-9_.-], no leading dot or dash), no symlinks, at most
  `Limits.artefact_bytes` in all, read through a handle no mount in the view can redirect.
  `readonly_inside` paths are bound read-only over the view (their ancestors pinned so they
  cannot be renamed away). Setup failures fail closed: the command does not run.
* our init: builds the view, then drops every capability (bounding, permitted, effective,
  inheritable, ambient) and sets no_new_privs and non-dumpable, so the child cannot undo
  the mounts, leave its cgroups, or ptrace the init; it starts the command (posix_spawn:
  no copy of itself), reaps orphans as subreaper, kills the rest of the tree when the
  command exits, reaps it all and reports the status and getrusage(RUSAGE_CHILDREN) CPU
  time of the whole tree on a pipe.
* the result channel (`result_channel=True`): fd 3 (RATCHET_RESULT_FD=3) is a write-only
  descriptor of an unlinked file created by the parent, fresh per run; only unshare (or
  the warm command half; outside the namespaces), the init and the command hold it.
  Whatever the command's children should not reach, the command must not pass on (mark
  it non-inheritable, be non-dumpable).
* always: a new session (killpg), rlimits (CPU seconds per process, file size, open files,
  no core dumps; RLIMIT_NPROC for non-root callers), stdin from /dev/null, stdout/stderr to
  unlinked files (capped head+tail returned; in memory (memfd) when the run's memory
  cgroup bounds them, else temp files on disk), an environment from a short allow-list
  from which anything named like a secret, or holding one of our secrets' values, is dropped.

Not covered (be honest with yourself before trusting a result):

* Without the mount namespace the child can read and write anything the calling user can
  (the real work dir, $HOME and its keys, other checkouts); artefacts and readonly_inside
  cannot be enforced. Without the pid namespace *and* a cgroup kill, a process can outlive
  the run if it kills the init first. Without the net namespace the network is open.
  Without a memory cgroup there is no memory limit (only the wall clock); without a pids
  cgroup a fork bomb is bounded by RLIMIT_NPROC (non-root) or the timeout (root). Without
  the mount namespace a root child (no capabilities, but uid 0 owns cgroupfs) can move
  itself out of its cgroups.
* Even with everything active: the rest of the filesystem stays *readable* (keep secrets
  in the environment or under $HOME); a Unix socket on a read-only path can be connected
  to; CPU is not throttled (the tree can use every core until the timeout); the sandbox
  installs no seccomp filter (the evaluation harness filters each candidate worker), so
  kernel bugs are in scope; timing side channels are not addressed; as root the child is
  uid 0 without capabilities, so file permissions are no barrier of their own. In a user
  namespace overlayfs cannot copy up files owned by an unmapped uid (writing them fails).
  `Limits.work_bytes=None` opts out of the private view: the real dir is writable and
  everything written stays. As root, the commands share root's own user keyring (keyctl:
  a key one run adds, the next can read, and so can the host), cold and warm alike; as
  non-root every run has its own (its own user namespace).
* Warm: the zygote is the caller's own code and user, alive as long as the `Warm`; page
  cache an earlier command left charged to the shared memory group counts toward the next
  command's limit until it is reclaimed; the pid numbers a command sees do not say how
  many processes earlier commands had (a fresh pid namespace each), but timing does.
* stdout belongs to the top-level command; a harness must not hand its stdout (or fd 3)
  to candidate processes, or they can forge the verdict: use the result channel.
"""

from __future__ import annotations

from .probe import describe_layers, missing_layers, private_work_view
from .runner import Limits, SandboxResult, run
from .warm import Warm

__all__ = ["Limits", "SandboxResult", "Warm", "describe_layers", "missing_layers",
           "private_work_view", "run"]
