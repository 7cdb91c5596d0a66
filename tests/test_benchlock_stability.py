"""Host stability probes (stability.py): fake sysfs trees, real affinity, a real CPU hog."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ratchetloop import stability


def fake_cpus(root: Path, govs: list[str]) -> Path:
    for i, gov in enumerate(govs):
        d = root / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_governor").write_text(gov + "\n")
    return root


def test_governors_are_counted_and_scaling_ones_warned(tmp_path: Path) -> None:
    root = fake_cpus(tmp_path, ["powersave", "powersave", "performance"])
    govs = stability.governors(root)
    assert govs == {"powersave": 2, "performance": 1}
    warnings = stability.governor_warnings(govs, None)
    assert len(warnings) == 1 and "powersave" in warnings[0]
    assert stability.governor_warnings({"performance": 4}, None) == []


def test_missing_cpufreq_is_unknown_not_an_error(tmp_path: Path) -> None:
    assert stability.governors(tmp_path) == {}
    assert stability.boost_state(tmp_path) is None


def test_turbo_state_is_read(tmp_path: Path) -> None:
    (tmp_path / "intel_pstate").mkdir()
    (tmp_path / "intel_pstate" / "no_turbo").write_text("0\n")
    assert stability.boost_state(tmp_path) == "on"
    assert any("turbo" in w for w in stability.governor_warnings({}, "on"))


def test_load_warning_scales_with_cores() -> None:
    assert stability.load_warning(0.2, 2) is None
    assert (stability.load_warning(1.5, 2) or "").startswith(
        "host busy: load average 1.50 on 2 usable core(s)")
    assert stability.load_warning(3.0, 16) is None
    assert stability.load_warning(None, 2) is None


PIN_AND_SPAWN = """import os, subprocess, sys
from ratchetloop import stability
cpu = stability.pin_current_process()
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(cpu, sorted(os.sched_getaffinity(0)), child)
"""


def pin_in_a_child(env: dict[str, str]) -> str:
    """pin_current_process() pins its caller for good, so it runs in a child, not in pytest."""
    return subprocess.run([sys.executable, "-c", PIN_AND_SPAWN], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}).stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity API")
def test_pin_takes_the_highest_allowed_cpu_and_children_inherit_it() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    top = allowed[-1]  # CPU 0 takes most interrupts
    assert pin_in_a_child({stability.ENV_CPU: ""}) == f"{top} [{top}] [{top}]"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity API")
def test_pin_takes_the_cpu_the_environment_names() -> None:
    first = sorted(os.sched_getaffinity(0))[0]
    assert pin_in_a_child({stability.ENV_CPU: str(first)}) == f"{first} [{first}] [{first}]"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_spinning_process_is_reported_as_a_hog() -> None:
    hog = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True)\nwhile 1: pass"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout is not None and hog.stdout.readline() == "\n"  # it is spinning now
        hogs = stability.cpu_hogs(interval=0.3, threshold=0.05)
        assert any(h.pid == hog.pid for h in hogs)
    finally:
        hog.kill()
        hog.wait()


def test_check_host_reports_without_sampling() -> None:
    report = stability.check_host(sample_seconds=0)
    assert report.cores >= 1 and report.hogs == []
    assert isinstance(report.to_dict()["warnings"], list)
