"""Run untrusted work (a candidate's build, validation and timing) in a contained child.

Candidate code is hostile. `run()` starts it as a tree of processes of its own, enforces
limits, kills the whole tree when it is done or out of time, and never raises for anything
the child does. Which layers are active depends on the machine: `describe_layers()` says,
per layer, whether it is active here and why not (``ratchet doctor`` prints it), and
`missing_layers()` lists the important ones that are off (the loop prints them).

Modules: `runner` (parent side: `run`, `Limits`, `SandboxResult`), `init` (the stdlib-only
init, run by file path inside the namespaces), `probe` (what works here; layer report),
`cgroups` (v1 and v2), `env` (allow-list, secret scrubbing, where homes and keys are).

Layers, outermost first (each optional, probed once, used when it works):

* cgroups, per function the v2 unified hierarchy when it offers it, else v1 (root, or a
  delegated subtree, e.g. systemd's user@.service for v2). memory: a hard limit on resident
  memory + page cache + tmpfs (OOM kill inside the group, not the machine; ASan's huge
  shadow *reservation* is fine, unlike RLIMIT_AS). pids: a process-count limit (RLIMIT_NPROC
  does not apply to root). kill: at the end v2 cgroup.kill (or freeze + SIGKILL, or the v1
  freezer) and run() waits until the group is empty, so nothing that double-forked,
  setsid()ed or re-parented itself survives. cpu: the tree's CPU time (v2 cpu.stat, v1
  cpuacct). For v2, memory/pids are enabled in our group's subtree_control when we may
  (moving ourselves into a leaf if we are the only process there).
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
  dir, upper in a tmpfs; O(1)) or, where overlay is not allowed, a tmpfs copy. Nothing
  written there flows back except declared `artefacts`: top-level regular files with plain
  names ([A-Za-z0-9_.-], no leading dot or dash), no symlinks, at most
  `Limits.artefact_bytes` in all, read through a handle no mount in the view can redirect.
  `readonly_inside` paths are bound read-only over the view (their ancestors pinned so they
  cannot be renamed away). Setup failures fail closed: the command does not run.
* our init: builds the view, then drops every capability (bounding, permitted, effective,
  inheritable, ambient) and sets no_new_privs and non-dumpable, so the child cannot undo
  the mounts, leave its cgroups, or ptrace the init; it forks the command, reaps orphans as
  subreaper, kills the rest of the tree when the command exits, reaps it all and reports
  the status and getrusage(RUSAGE_CHILDREN) CPU time of the whole tree on a pipe.
* the result channel (`result_channel=True`): fd 3 (RATCHET_RESULT_FD=3) is a write-only
  descriptor of an unlinked temp file created by the parent; only unshare (outside the
  namespaces), the init and the command hold it. Whatever the command's children should not
  reach, the command must not pass on (mark it non-inheritable, be non-dumpable).
* always: a new session (killpg), rlimits (CPU seconds per process, file size, open files,
  no core dumps; RLIMIT_NPROC for non-root callers), stdin from /dev/null, stdout/stderr to
  unlinked temp files (capped head+tail returned), an environment from a short allow-list
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
  everything written stays.
* stdout belongs to the top-level command; a harness must not hand its stdout (or fd 3)
  to candidate processes, or they can forge the verdict: use the result channel.
"""

from __future__ import annotations

from .probe import describe_layers, missing_layers
from .runner import Limits, SandboxResult, run

__all__ = ["Limits", "SandboxResult", "describe_layers", "missing_layers", "run"]
