"""Keep a process's memory out of reach of other processes of the same user.

A non-dumpable process cannot be ptraced, and its /proc/<pid>/mem, environ and fd/ cannot
be opened, by a process of the same uid without CAP_SYS_PTRACE (which sandboxed children
never have). The loop holds API keys in memory and its environment; the evaluator holds
the result channel. Both call this first. It is lost on exec, so children start dumpable.
"""

from __future__ import annotations

import ctypes

PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """True when the kernel accepted it (Linux); False elsewhere, which is not an error."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
