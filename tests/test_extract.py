"""extract.py: exactly one target function and a one-line note, or a recorded failure kind."""

from __future__ import annotations

import pytest

from ratchetloop.extract import ExtractionError, extract, fingerprint

C_OK = "void matmul_forward(float* out) {\n    /* { not a brace */ out[0] = 1.0f;\n}\n"


def test_c_function_and_note() -> None:
    got = extract(f"text\n```c\n{C_OK}```\nNote: set one\nIdea: tile by 4\n", "matmul_forward")
    assert got.source == C_OK and got.note == "set one" and got.ideas == ["tile by 4"]


@pytest.mark.parametrize("text, kind", [
    ("just words", "no_code"),
    ("```c\nvoid matmul_forward(float* out) {\n", "truncated"),
    ("```c\nvoid other(float* out) { }\n```\n", "wrong_function"),
    ("```c\nint x = 3;\n```\n", "no_function"),
    (f"```c\n{C_OK}static void helper(void) {{ }}\n```\n", "multiple_functions"),
])
def test_c_failures_have_kinds(text: str, kind: str) -> None:
    with pytest.raises(ExtractionError) as exc:
        extract(text, "matmul_forward")
    assert exc.value.kind == kind


def test_python_target_and_fingerprint_ignores_formatting() -> None:
    a = extract("```python\ndef fib(n):\n    return n  # same\n```\n", "fib", "python")
    b = "def fib(n):\n\n    return (n)\n"
    assert a.fingerprint == fingerprint(b, "python")
    assert fingerprint("int f(){return 1;}", "c") == fingerprint("int f() {\n  return 1; // x\n}")
    assert fingerprint("int f(){return 1;}") != fingerprint("int f(){return 2;}")
    with pytest.raises(ExtractionError) as exc:
        extract("```python\ndef fib(n):\n    return n\ndef g():\n    pass\n```", "fib", "python")
    assert exc.value.kind == "multiple_functions"
