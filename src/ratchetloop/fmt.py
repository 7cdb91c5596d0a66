"""Numbers as people and models should read them: a few significant digits, no e-notation.

A median such as 4456.907499999999 is noise past its fourth digit; printing it whole in a
prompt or in MEMORY.md invites a model to reason about the noise.
"""

from __future__ import annotations

import math


def significant(value: float, digits: int = 4) -> str:
    """`digits` significant digits in plain notation (4456.9075 -> "4457", 0.0123456 ->
    "0.01235"); zero, inf and nan as Python writes them."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{round(value, decimals):.{decimals}f}"


def times(speedup: float) -> str:
    """A speedup as "x1.021" or "x4457": three decimals near 1, where they matter."""
    if not math.isfinite(speedup):
        return f"x{speedup:g}"
    return f"x{speedup:.3f}" if abs(speedup) < 10 else f"x{significant(speedup)}"
