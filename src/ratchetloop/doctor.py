"""What `ratchet models` and `ratchet doctor` report: rows of (check, status, detail).

Keys are reported as "set" (with where from) or "missing", never their values. Servers
are probed only where the user pointed us (local Ollama, or base URLs passed in), with a
short timeout; the public APIs are not contacted. Status is one of "ok", "missing",
"warn", "unreachable" or "off" (a sandbox layer that is off but not needed here) so the CLI
can colour it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from .errors import RatchetError
from .proposers import keys
from .proposers.registry import ollama_base_url

if TYPE_CHECKING:  # annotations only: `ratchet models` never needs pydantic
    from rich.table import Table

    from .experiment import Experiment

PROBE_TIMEOUT = 0.5


class Row(NamedTuple):
    check: str
    status: str  # ok | missing | warn | unreachable | off
    detail: str


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """GET `url` once; (reachable?, short reason). Any HTTP answer counts as reachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user's URL
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return True, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, str(reason)[:80]


def _key_row(var: str, backend: str, optional: bool = False) -> Row:
    source = keys.key_source(var)
    if source != "missing":
        return Row(f"{backend} key", "ok", f"{var} set ({source})")
    return Row(f"{backend} key", "warn" if optional else "missing", f"{var} missing")


def _keys_file_row() -> Row:
    path = keys.keys_file_path()
    if not path.exists():
        return Row("keys file", "ok", f"{path} (absent; environment only)")
    try:
        entries = keys.load_keys_file(path)
    except RatchetError as exc:
        return Row("keys file", "warn", str(exc))
    return Row("keys file", "ok", f"{path} (0600, {len(entries)} entries)")


def _cli_row(binary: str, label: str) -> Row:
    path = shutil.which(binary)
    if not path:
        return Row(label, "missing", f"`{binary}` not on PATH")
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=5, check=False
        )
        version = (out.stdout or out.stderr).strip().splitlines()[:1]
    except (OSError, subprocess.TimeoutExpired):
        version = []
    return Row(label, "ok", f"{path} {version[0] if version else ''}".strip())


def _ollama_row() -> Row:
    base = ollama_base_url().removesuffix("/v1")
    ok, why = probe(base + "/api/tags")
    return Row("ollama", "ok" if ok else "unreachable", f"{base} ({why})")


def model_rows(base_urls: Iterable[str] = ()) -> list[Row]:
    """Backends and whether each is usable here: keys, local servers, CLI agents."""
    rows = [
        Row("tuner", "ok", "offline knob search; not a language model, no key needed"),
        _key_row(keys.OPENAI, "openai"),
        Row(
            "openai base URL",
            "ok",
            os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1 (default)",
        ),
        _key_row(keys.ANTHROPIC, "anthropic"),
        Row(
            "anthropic base URL",
            "ok",
            os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com (default)",
        ),
        _ollama_row(),
        _key_row(keys.OPENAI_COMPATIBLE, "openai-compatible", optional=True),
    ]
    for url in base_urls:
        ok, why = probe(url.rstrip("/") + "/models")
        rows.append(Row(f"server {url}", "ok" if ok else "unreachable", why))
    rows += [_cli_row("claude", "claude-cli"), _cli_row("codex", "codex-cli"), _keys_file_row()]
    return rows


def _tool_row(tool: str) -> Row:
    path = shutil.which(tool)
    if not path:
        return Row(f"toolchain {tool}", "missing", "not on PATH")
    return Row(f"toolchain {tool}", "ok", path)


def sandbox_rows() -> list[Row]:
    """One row per containment layer: active or off, and what it covers or why it is off.

    Important layers that are off (`sandbox.missing_layers()`) are warnings; the others
    (e.g. no user namespace because we run as root) are just "off".
    """
    from . import sandbox

    important = {name for name, _ in sandbox.missing_layers()}
    rows = []
    for name, active, detail in sandbox.describe_layers():
        status = "ok" if active else "warn" if name in important else "off"
        rows.append(Row(f"sandbox {name}", status,
                        f"{'active' if active else 'off'}: {detail}"))
    return rows


def ray_rows(address: str) -> list[Row]:
    """A Ray cluster's nodes (`ratchet doctor --ray`): address, alive, CPUs, bench slots."""
    from .cluster import node_rows

    return [Row(*row) for row in node_rows(address)]


def doctor_rows(experiment: Experiment | None = None, ray: str | None = None) -> list[Row]:
    """Everything a run depends on: Python, git, toolchains, sandbox layers, backends (and
    the Ray cluster's nodes when `ray` names one)."""
    rows = [Row("python", "ok", f"{platform.python_version()} ({platform.machine()})")]
    rows.append(_tool_row("git"))
    tools = ["gcc", *(experiment.toolchain if experiment else [])]
    rows += [_tool_row(t) for t in dict.fromkeys(tools)]
    if experiment is not None:
        rows.append(Row(f"experiment {experiment.name}", "ok", str(experiment.root)))
    rows += sandbox_rows()
    if ray is not None:
        rows += ray_rows(ray)
    return rows + model_rows()


_STYLE = {"ok": "green", "missing": "red", "warn": "yellow", "unreachable": "yellow",
          "off": "dim"}


def rows_table(title: str, rows: list[Row]) -> Table:
    """A rich table of rows for the CLI."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        colour = _STYLE.get(row.status, "white")
        table.add_row(escape(row.check), f"[{colour}]{escape(row.status)}[/]", escape(row.detail))
    return table
