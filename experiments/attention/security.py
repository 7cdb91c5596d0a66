"""Reject attention candidates that break the contract before anything compiles.

A first filter with messages a model can act on; the wall is what runs after it (object
checks, the worker's seccomp filter, the sandbox). The shared rules are in
ratchetloop.harness.csecurity: no system headers beyond maths and intrinsics, no
process/file/network/loader calls, no inline assembly, no code that runs outside the call,
no state between calls (a cache of the last inputs would pass a single-call check).
"""

from ratchetloop.harness.csecurity import BASE_HEADERS, check_c_source

ALLOWED_HEADERS = BASE_HEADERS


def check(source: str) -> list[str]:
    """Reasons to reject `source` (empty list = allowed to compile)."""
    return check_c_source(source, headers=ALLOWED_HEADERS)
