"""What a generic project's commands see: the user's interpreter on PATH, and the variables
the contract passes through -- never a secret.

Why this exists: the sandbox builds its child's environment from a short allow-list
(sandbox/env.py) and hides $HOME and /tmp behind empty tmpfs mounts. A user's venv or pyenv
interpreter usually lives there, so `python3` silently fell through to the system python,
and the only way to set a variable was to write it into the run command, where every
prompt shows it.

PATH (`generic.path`)
---------------------
"inherit" (the default) resolves PATH as the user's shell has it, afresh at every `ratchet
init` and `ratchet run`, in this order (duplicates keep their first place):

1. `$VIRTUAL_ENV/bin` -- an activated venv;
2. `$CONDA_PREFIX/bin` -- an activated conda env;
3. `<repo>/.venv/bin`, else `<repo>/venv/bin` -- a project-local venv, when it holds a
   python. Runs happen in a copy of the *tracked* files, which has no .venv, so the
   checkout's venv is used by its absolute path, read-only;
4. the invoking $PATH, in order, with relative entries (".", "") dropped (a run's cwd holds
   candidate-written files) and pyenv's shims directory replaced by the bin directory of
   the version `pyenv prefix` selects in the repository (shims are scripts that need
   pyenv's root, which the sandbox hides).

A list of absolute directories instead of "inherit" is used exactly as given.

Every PATH directory holding a `python3`/`python` has that interpreter's installation
bound back read-only into the sandbox (`ro_paths`): the venv, the base installation its
pyvenv.cfg names, and the prefix the executable really lives in. Nothing that contains the
repository (or is a home) is bound. Other programs under a hidden directory (~/.local/bin,
~/.cargo/bin...) stay invisible inside the sandbox.

Variables (`generic.env`)
-------------------------
Names only; the values are read from the environment of `ratchet run` when the first
command runs, so they are never in the contract, git or a prompt. A name that is not set
is not passed. A name or value that the sandbox's own secret rules would drop
(sandbox.env.child_env: names like *KEY*/*TOKEN*, values containing one of our secrets'
values) is refused with a message, never silently dropped or passed. PATH, HOME, TMPDIR and
$RATCHET_RESULT_FD belong to the sandbox and cannot be passed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RatchetError
from ..sandbox.env import RESULT_FD_VAR, SECRET_PATTERNS, child_env, homes, looks_secret

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED = {"PATH": "set it with generic.path in experiment.json",
            "HOME": "the sandbox gives every run a private one",
            "TMPDIR": "the sandbox gives every run a private one",
            RESULT_FD_VAR: "the sandbox hands out the result channel"}
PYTHONS = ("python3", "python")
PROJECT_VENVS = (".venv", "venv")


def name_problem(name: str) -> str | None:
    """Why `name` may not be passed to the sandbox (None: it may)."""
    if not NAME.fullmatch(name):
        return f"{name!r} is not a variable name"
    if looks_secret(name):
        return (f"{name} looks like a secret (names like {', '.join(SECRET_PATTERNS)});"
                " secrets never reach the sandbox")
    if name in RESERVED:
        return f"{name} cannot be passed: {RESERVED[name]}"
    return None


def passed_values(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The set variables among `names`; refuses (RatchetError) any the sandbox would drop.

    The secret values compared with are this process's (sandbox.env), as in sandbox.run.
    """
    refused = [why for why in map(name_problem, names) if why]
    values = {n: environ[n] for n in names if n in environ and not name_problem(n)}
    _, dropped = child_env(values)  # the sandbox's own rules, not a copy of them
    refused += [f"{n}: its value contains the value of one of your secret-named variables"
                " (secrets never reach the sandbox)" for n in dropped if n in values]
    if refused:
        raise RatchetError("refused --env: " + "; ".join(refused))
    return values


@dataclass(frozen=True)
class Resolved:
    """A command's PATH, the python it finds there, and what the sandbox must bind back."""

    path: list[str]
    python: str | None
    binds: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CommandEnv:
    """What every sandboxed command of a project gets: `sandbox.run(env=..., ro_paths=...)`."""

    env: dict[str, str]
    ro_paths: list[Path]
    resolved: Resolved

    @classmethod
    def build(cls, path: str | list[str], names: Sequence[str], repo: Path | None,
              environ: Mapping[str, str] | None = None) -> CommandEnv:
        environ = os.environ if environ is None else environ
        resolved = resolve_path(path, repo, environ)
        env = {**passed_values(names, environ), "PATH": os.pathsep.join(resolved.path)}
        return cls(env=env, ro_paths=resolved.binds, resolved=resolved)


def resolve_path(setting: str | list[str], repo: Path | None,
                 environ: Mapping[str, str]) -> Resolved:
    """PATH for the project's commands, in the order the module docstring gives."""
    notes: list[str] = []
    if isinstance(setting, list):
        entries = list(setting)
        notes.append("generic.path from the contract")
    else:
        entries = _inherited(repo, environ, notes)
    path = list(dict.fromkeys(os.path.normpath(e) for e in entries))
    joined = os.pathsep.join(path)
    python = shutil.which("python3", path=joined) or shutil.which("python", path=joined)
    return Resolved(path=path, python=python, binds=_binds(path, repo), notes=notes)


def _inherited(repo: Path | None, environ: Mapping[str, str], notes: list[str]) -> list[str]:
    """"inherit": active venv, active conda env, project venv, then the invoking PATH."""
    entries = []
    for var, what in (("VIRTUAL_ENV", "active venv"), ("CONDA_PREFIX", "active conda env")):
        prefix = environ.get(var, "")
        if os.path.isabs(prefix) and os.path.isdir(os.path.join(prefix, "bin")):
            entries.append(os.path.join(prefix, "bin"))
            notes.append(f"{what} ${var}")
    venvs = [repo / name / "bin" for name in PROJECT_VENVS] if repo is not None else []
    project = next((v for v in venvs if _python_in(str(v))), None)
    if project is not None:
        entries.append(str(project))
        notes.append(f"project venv {project.parent.name}/")
    pyenv: dict[Path, tuple[list[str], str]] = {}
    for entry in environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(entry):
            continue  # "" and "." would search the run's directory, which a candidate wrote
        root = _pyenv_root(entry, environ)
        if root is None:
            entries.append(entry)
            continue
        if root not in pyenv:
            pyenv[root] = _pyenv_prefixes(root, repo, environ)
            prefixes, why = pyenv[root]
            if why:
                notes.append(f"pyenv shims kept ({why}): they do not work under a hidden home")
            else:
                names = ", ".join(os.path.basename(p) for p in prefixes)
                notes.append(f"pyenv {names} instead of its shims")
        prefixes = pyenv[root][0]
        entries += [os.path.join(p, "bin") for p in prefixes] if prefixes else [entry]
    return entries


def describe(resolved: Resolved) -> str:
    """One line for `ratchet init`: which python the commands get, and why."""
    where = f" ({'; '.join(resolved.notes)})" if resolved.notes else ""
    if resolved.python is None:
        return f"no python on the commands' PATH{where}"
    return f"commands run with python3 = {resolved.python}{where}"


def _python_in(directory: str) -> str | None:
    for name in PYTHONS:
        exe = os.path.join(directory, name)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def _pyenv_root(entry: str, environ: Mapping[str, str]) -> Path | None:
    """pyenv's root when `entry` is one of its shims directories (plugins' too)."""
    p = Path(entry)
    if p.name != "shims":
        return None
    root = environ.get("PYENV_ROOT", "")
    if root and os.path.isabs(root) and (p == Path(root) / "shims" or Path(root) in p.parents):
        return Path(root)
    if (p.parent / "libexec" / "pyenv").is_file():
        return p.parent
    return None


def _pyenv_prefixes(root: Path, repo: Path | None,
                    environ: Mapping[str, str]) -> tuple[list[str], str]:
    """(installation prefixes of the versions pyenv selects in `repo`, why not)."""
    command = next((str(c) for c in (root / "libexec" / "pyenv", root / "bin" / "pyenv")
                    if c.is_file()), None)
    if command is None:
        return [], "pyenv not found"
    try:
        proc = subprocess.run([command, "prefix"], cwd=repo or None, capture_output=True,
                              text=True, timeout=30, env={**environ, "PYENV_ROOT": str(root)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"pyenv prefix: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return [], f"pyenv prefix: {lines[-1] if lines else f'exit {proc.returncode}'}"
    prefixes = [p for p in proc.stdout.strip().split(os.pathsep) if os.path.isabs(p)]
    return prefixes, ""


def _binds(path: list[str], repo: Path | None) -> list[Path]:
    """Read-only binds for every interpreter on PATH: venv, its base, the real prefix."""
    found: set[str] = set()
    for directory in path:
        exe = _python_in(directory)
        if exe is None:
            continue
        venv = Path(directory).parent
        cfg = venv / "pyvenv.cfg"
        if cfg.is_file():
            found.add(str(venv))
            home = _cfg_home(cfg)
            if home:
                found.add(str(home.parent if home.name == "bin" else home))
        exe_dir = Path(os.path.realpath(exe)).parent
        found.add(str(exe_dir.parent if exe_dir.name == "bin" else exe_dir))
    blocked = [os.path.realpath(repo)] if repo is not None else []
    blocked += homes()
    out = []
    for p in sorted(found):
        real = os.path.realpath(p)
        if real != "/" and os.path.isdir(real) and not any(
                b == real or b.startswith(real.rstrip("/") + "/") for b in blocked):
            out.append(Path(p))
    return out


def _cfg_home(cfg: Path) -> Path | None:
    try:
        for line in cfg.read_text("utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and os.path.isabs(value.strip()):
                return Path(value.strip())
    except OSError:
        pass
    return None
