"""Reject linear candidates that break the contract before anything compiles.

A first filter with messages a model can act on; the wall is what runs after it (object
checks, the worker's seccomp filter, the sandbox). The shared rules are in
ratchetloop.harness.csecurity; this experiment allows the x86 intrinsic headers, no
state between calls, and `__builtin_cpu_supports` (AVX-512 code must be guarded by it;
eval.py allows the one symbol it reads, libgcc's read-only-in-practice `__cpu_model`).
"""

from ratchetloop.harness.csecurity import BASE_HEADERS, X86_HEADERS, check_c_source

ALLOWED_HEADERS = BASE_HEADERS | X86_HEADERS
CPU_BUILTINS = frozenset({"__builtin_cpu_supports"})


def check(source: str) -> list[str]:
    """One human-readable reason per violated rule; [] means the candidate may compile."""
    return check_c_source(source, headers=ALLOWED_HEADERS, builtins=CPU_BUILTINS)
