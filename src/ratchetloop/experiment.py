"""The experiment contract: experiment.json as a pydantic model, plus the experiment's own hooks.

An experiment folder owns its rules (prompt.py, security.py, eval.py); this module only
finds the folder, validates the contract, and imports the hooks from their files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import RatchetError

Direction = Literal["lower_is_better", "higher_is_better"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(Strict):
    file: str = Field(description="the live candidate file the loop writes")
    function: str = Field(description="the one function a proposal must define")
    language: str = "c"


class Case(Strict):
    name: str
    primary: bool = False
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)


class Acceptance(Strict):
    """How sure the loop must be before a candidate counts as better."""

    min_effect: float = Field(0.01, ge=0, lt=1, description="smallest relative gain worth keeping")
    confidence: float = Field(0.99, gt=0.5, lt=1)
    min_rounds: int = Field(8, ge=3)
    max_rounds: int = Field(96, ge=3)  # 5% gains need ~90 rounds at 7% per-round noise
    batch_rounds: int = Field(8, ge=1)
    max_seconds: float = Field(60.0, gt=0)
    # Generic mode: paired interleaved rounds, or one run per candidate against the noise
    # known from the incumbent's runs (ratchetloop.trials); "auto" picks from cost and noise.
    mode: Literal["auto", "paired", "known_noise"] = "auto"
    confirm: int = Field(1, ge=0, le=5, description="known-noise mode: runs that confirm a"
                         " would-be winner before it is committed (when max_seconds allows)")
    max_runs: int = Field(3, ge=1, le=50, description="known-noise mode: most runs of a candidate")
    recheck_every: int = Field(20, ge=1, description="known-noise mode: re-run the incumbent"
                               " every this many candidates (drift check)")
    auto_run_seconds: float = Field(10.0, gt=0, description="auto: a run at least this slow"
                                    " (with noise below min_effect) is judged in known-noise mode")

    @model_validator(mode="after")
    def _rounds_ordered(self) -> Acceptance:
        if self.max_rounds < self.min_rounds:
            raise ValueError("max_rounds must be >= min_rounds")
        return self


class Experiment(Strict):
    name: str
    description: str = ""
    target: Target
    naive: str
    direction: Direction = "lower_is_better"
    unit: str = "us"
    cases: list[Case]
    timeout_seconds: float = Field(300.0, gt=0)
    toolchain: list[str] = Field(default_factory=list)
    acceptance: Acceptance = Field(default_factory=Acceptance)
    knobs: dict[str, list[Any]] = Field(default_factory=dict)
    template: str | None = Field(None, description="tuner template: render(knobs) -> source")
    hypotheses: list[str] = Field(default_factory=list)
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per-model price override, USD per million tokens"
    )
    generic: dict[str, Any] | None = Field(
        None, description="generic mode (ratchetloop.generic.contract): run command, metric, files"
    )

    # Filled in by load(); not part of the JSON contract.
    root: Path = Field(default=Path("."), exclude=True)
    _hooks: dict[str, ModuleType] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cases_sane(self) -> Experiment:
        if not self.cases:
            raise ValueError("at least one case is required")
        names = [c.name for c in self.cases]
        if len(set(names)) != len(names):
            raise ValueError("case names must be unique")
        if sum(c.primary for c in self.cases) > 1:
            raise ValueError("at most one case may be primary")
        return self

    @property
    def enabled_cases(self) -> list[Case]:
        return [c for c in self.cases if c.enabled]

    @property
    def primary_case(self) -> str | None:
        """The enabled case that alone decides "better overall", if the contract marks one."""
        return next((c.name for c in self.enabled_cases if c.primary), None)

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower_is_better"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def folder(self) -> str:
        """The folder's name: what the user types (`ratchet run linear`), so commit messages
        use it, also when experiment.json's `name` says something else (a copied folder)."""
        return self.root.name

    @property
    def candidate_path(self) -> Path:
        return self.path(self.target.file)

    @property
    def naive_path(self) -> Path:
        return self.path(self.naive)

    def hook(self, name: str) -> ModuleType:
        """Import prompt.py / security.py from the experiment folder (once per run)."""
        if name not in self._hooks:
            self._hooks[name] = import_file(self.path(f"{name}.py"),
                                            f"ratchet_exp_{self.name}_{name}")
        return self._hooks[name]

    def build_prompt(self, context: dict[str, Any]) -> str:
        return str(self.hook("prompt").build(context))

    def security_check(self) -> Callable[[str], list[str]]:
        return self.hook("security").check

    def check_toolchain(self) -> None:
        missing = [tool for tool in self.toolchain if shutil.which(tool) is None]
        if missing:
            raise RatchetError(
                f"experiment {self.name!r} needs {', '.join(missing)} on PATH"
                " (install it, e.g. `apt-get install gcc`)"
            )


def import_file(path: Path, module_name: str) -> ModuleType:
    if not path.is_file():
        raise RatchetError(f"missing {path}")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RatchetError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_experiment_dir(name_or_path: str, start: Path | None = None,
                        root: Path | str | None = None) -> Path:
    """Resolve `linear`, `experiments/linear` or an absolute path to an experiment folder.

    A name is looked up as experiments/<name> and .ratchet/<name> in `root` (--root, default
    $RATCHET_ROOT) when one is given -- an explicit choice wins, so `--root` cannot be
    shadowed by a same-named experiment where the command happens to start -- then in the
    current directory (`start`) and its parents up to the enclosing git repository's top.
    Never in ratchetloop's own folder: a loop started outside a project must not run, and
    commit, inside the clone it was installed from.
    """
    candidate = Path(name_or_path)
    if (candidate / "experiment.json").is_file():
        return candidate.resolve()
    if candidate.is_absolute() or len(candidate.parts) != 1 or name_or_path in (".", ".."):
        raise RatchetError(f"no experiment at {name_or_path}: {candidate}/experiment.json"
                           " does not exist")
    here = (start or Path.cwd()).resolve()
    if root is None:
        root = os.environ.get("RATCHET_ROOT")
    explicit = [Path(root).expanduser().resolve()] if root else []  # "" means none
    bases = explicit + _search_bases(here)
    for base in bases:
        for folder in (base / "experiments" / name_or_path, base / ".ratchet" / name_or_path):
            if (folder / "experiment.json").is_file():
                return folder
    raise RatchetError(_not_found(name_or_path, bases, bool(root)))


def _search_bases(here: Path) -> list[Path]:
    """`here` and its parents up to the git work tree's top (only `here` outside git)."""
    chain = [here, *here.parents]
    for i, base in enumerate(chain):
        if (base / ".git").exists():
            return chain[: i + 1]
    return [here]


def _not_found(name: str, bases: list[Path], rooted: bool) -> str:
    from .shipped import shipped

    try:
        ships = shipped()
    except RatchetError:
        ships = {}
    places = ", ".join(str(b) for b in dict.fromkeys(bases))
    hint = (f"`ratchet new {name}` copies the shipped one here" if name in ships
            else "`ratchet new <name>` starts one (`ratchet new --list`)")
    where = "" if rooted else "; --root DIR (or RATCHET_ROOT) names another project"
    return (f"no experiment {name!r}: looked for experiments/{name}/experiment.json and"
            f" .ratchet/{name}/experiment.json in {places}; {hint}{where}")


def load(name_or_path: str | Path, start: Path | None = None) -> Experiment:
    root = find_experiment_dir(str(name_or_path), start)
    contract = root / "experiment.json"
    try:
        data = json.loads(contract.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RatchetError(f"{contract}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        exp = Experiment.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise RatchetError(f"{contract}: field {where!r}: {err['msg']}") from None
    exp.root = root
    # generic mode runs a command, and writes its seed from git when it prepares
    needed = (exp.naive, "eval.py") if exp.generic is None else ()
    for rel in (*needed, "prompt.py", "security.py"):
        if not exp.path(rel).is_file():
            raise RatchetError(f"experiment {exp.name!r} is missing {rel} in {root}")
    return exp
