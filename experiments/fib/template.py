"""Tuner template: one knob, the algorithm. Each rendering is a complete candidate."""

SOURCES = {
    "recursive": """def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)
""",
    "memo_dict": """def fib(n, _cache={0: 0, 1: 1}):
    if n not in _cache:
        _cache[n] = fib(n - 1) + fib(n - 2)
    return _cache[n]
""",
    "iterative": """def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
""",
    "lru_cache": """import functools


@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
""",
    "fast_doubling": """def fib(n):
    a, b = 0, 1
    for bit in bin(n)[2:]:
        c = a * (2 * b - a)
        d = a * a + b * b
        a, b = (d, c + d) if bit == "1" else (c, d)
    return a
""",
}


def render(knobs: dict) -> str:
    return SOURCES[knobs["strategy"]]
