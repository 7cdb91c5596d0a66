"""memory.py: failure signatures group by cause, not by names, lines or numbers."""

from __future__ import annotations

from ratchetloop.memory import Memory, signature


def test_build_errors_group_without_names_or_lines() -> None:
    a = signature("build_error", "x", "cand.c:3:5: error: ‘foo’ undeclared (first use)")
    b = signature("build_error", "y", "cand.c:9:1: error: ‘bar’ undeclared (first use)")
    c = signature("build_error", "z", "cand.c:9:1: error: expected ‘;’ before ‘}’ token")
    assert a == b != c


def test_record_failure_counts_and_keeps_one_example() -> None:
    mem = Memory()
    for i in range(5):
        mem.record_failure(i, "timeout", f"took {i}0 s", "", f"note {i}")
    (group,) = mem.failing.values()
    assert group.count == 5 and group.first_iteration == 0 and group.last_iteration == 4
    assert group.example == "took 00 s" and len(group.notes) == 3
    assert "5x timeout" in mem.render()


def test_ideas_marked_tried_by_notes() -> None:
    mem = Memory()
    mem.add_hypotheses(["memoise results in a dict"])
    mem.mark_tried("memoise fib results")
    assert mem.unexplored[0].tried
    assert "memoise" not in mem.render().split("## Still unexplored")[1]


def test_numbers_in_prompts_are_rounded_and_never_in_e_notation() -> None:
    from ratchetloop.fmt import significant, times

    assert significant(4456.907499999999) == "4457"
    assert significant(0.012345678) == "0.01235"
    assert significant(123456789.0) == "123456789"
    assert times(1.0213) == "x1.021"
    assert times(4456.907) == "x4457"
    assert times(12345.6) == "x12346"
