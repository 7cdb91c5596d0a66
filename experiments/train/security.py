"""Reject a candidate bundle before it runs: return reasons (empty = fine).

The run command always runs in ratchetloop's sandbox; add project rules here.
"""

from ratchetloop.generic.prompting import default_security


def check(source: str) -> list[str]:
    return default_security(source)
