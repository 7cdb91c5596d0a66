"""The generic-mode contract (experiment.json's "generic" block) and how a metric is read.

A generic project is an ordinary experiment whose eval step runs the user's command on a
clean copy of the tree being judged; this block says which files the model may edit, what
it may read, what to run, how to read one number out of the run, what independent check a
winner must pass, and what to do with a winner whose claim the outside measurement
contradicts.

Where the metric comes from (`metric.channel`)
----------------------------------------------
The candidate runs inside the user's own benchmark process, so it can print anything --
including a forged metric line from `atexit` -- and a "last match wins" reader would take
it. So the sandbox gives the command a second, write-only channel, file descriptor
`$RATCHET_RESULT_FD` (3), whose bytes come back apart from stdout/stderr:

* "fd": the value MUST come from the channel; stdout is never read for it.
* "auto" (default): the channel when the benchmark writes there, else the output. Which of
  the two the project uses is learned from the trusted runs (the seed and the incumbent)
  and a candidate run must use the same one: a candidate that writes to the channel of a
  benchmark that only prints, or silences the channel of one that writes there and prints
  a number instead, is an `integrity` failure (see GenericWorkspace._channel_mismatch).
* "output": the channel is not opened; the output is read as `kind` says.

Reading the channel is strict: exactly one number (surrounding whitespace allowed).
Anything else -- two values (a candidate wrote one of its own), text, NaN -- is an
`integrity` failure, never a best guess. This makes forgery hard and visible, not
impossible: code in the benchmark's process can still reach the descriptor or patch the
clock the benchmark reads; the outside measurement and `check_command` are the other
guards (see docs/your-own-project.md).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .. import gitops
from ..errors import RatchetError
from ..experiment import Experiment
from . import constraints as constraints_mod
from .environment import name_problem

if TYPE_CHECKING:
    from .environment import CommandEnv

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
TIME_UNITS = {"s", "sec", "secs", "second", "seconds", "ms", "msec", "us", "usec", "\u00b5s",
              "ns", "nsec"}
GIT_SPECIAL = {".gitattributes", ".gitmodules"}
CHANNEL_MAX = 64  # bytes; a metric is one number


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSpec(Strict):
    """last_number: the last number printed; regex: group 1 of the last match; json_key:
    a (dotted) key of the last JSON object line."""

    kind: Literal["last_number", "regex", "json_key"] = "last_number"
    pattern: str | None = None
    key: str | None = None
    channel: Literal["auto", "fd", "output"] = "auto"

    @model_validator(mode="after")
    def _complete(self) -> MetricSpec:
        if self.kind == "regex":
            try:
                groups = re.compile(self.pattern).groups if self.pattern else 0
            except re.error as exc:  # not a ValueError: pydantic would let it through
                raise ValueError(f"{self.pattern!r} is not a regex: {exc}") from None
            if groups != 1:
                raise ValueError("a regex metric needs a pattern with exactly one group")
        if self.kind == "json_key" and not self.key:
            raise ValueError("a json_key metric needs a key")
        return self


class NamedMetric(MetricSpec):
    """A secondary metric: read from the run's output (the result channel carries the
    primary metric only), shown everywhere, usable in `constraints`."""

    channel: Literal["auto", "fd", "output"] = "output"

    @model_validator(mode="after")
    def _from_output(self) -> NamedMetric:
        if self.channel == "fd":
            raise ValueError("a named metric is read from the output: the result channel"
                             " carries the primary metric only")
        return self


class SizeRule(Strict):
    """Equal metric with simpler code is kept; a tiny gain bought with much more code is not.

    * a candidate whose metric is not worse (verdict "same") is accepted when it removes at
      least `min_removed_pct` percent of the editable files' non-blank lines;
    * a "better" candidate whose gain is below 2 x min_effect is rejected when it adds more
      than `max_added_lines` non-blank lines.
    """

    min_removed_pct: float = Field(10.0, ge=0, le=100)
    max_added_lines: int = Field(20, ge=0)


class GenericSpec(Strict):
    tag: str
    editable: list[str] = Field(min_length=1)
    readonly: list[str] = Field(default_factory=list)
    run_command: str
    metric: MetricSpec = Field(default_factory=MetricSpec)
    setup_check: str | None = None
    fix_attempts: int = Field(2, ge=0, le=5)
    size_rule: SizeRule = Field(default_factory=SizeRule)
    no_new_dependencies: bool = False
    edit_blocks_above_lines: int = Field(
        200, description="files longer than this are edited with SEARCH/REPLACE blocks")
    check_command: str | None = Field(
        None, description="must exit 0 on a clean copy of every winner before it is committed")
    implausible: Literal["flag", "reject"] = Field(
        "flag", description="a time metric that got better while the command's CPU time got"
        " measurably worse: flag the winner, or reject it")
    metric_is_time: bool | None = Field(
        None, description="the metric is a time (lower is better); None: from the unit")
    env: list[str] = Field(
        default_factory=list, description="variables passed through to every command; only"
        " names: the values are read at `ratchet run`, never stored (environment.py)")
    path: Literal["inherit"] | list[str] = Field(
        "inherit", description="the commands' PATH: 'inherit' resolves it as your shell has it"
        " (venv, project .venv, pyenv; environment.py), or a list of absolute directories")
    metrics: dict[str, NamedMetric] = Field(
        default_factory=dict, description="secondary metrics by name, read from the output;"
        " shown in results.tsv, SCORES and result.json, usable in constraints")
    constraints: list[str] = Field(
        default_factory=list, description="bounds every winner must keep, e.g."
        " 'peak_rss_mb<=512': on a named metric, a built-in (wall_seconds, cpu_seconds,"
        " peak_rss_mb) or the primary ('metric'); see constraints.py")
    relative_to: Literal["repository", "experiment"] = Field(
        "repository", description="what editable/readonly paths are relative to; commands"
        " run in that directory ('experiment': the folder holding experiment.json, so a"
        " copied experiment folder works wherever it lands in a repository)")
    trial_seconds: float | None = Field(
        None, gt=0, description="a fixed time budget per run: passed to the command as"
        " $RATCHET_TRIAL_SECONDS, which is stopped (SIGTERM) at the budget and killed"
        " trial_grace_seconds later; a run that ends at the budget with its metric is a result")
    trial_grace_seconds: float = Field(10.0, ge=0, le=600)
    _root: Path | None = PrivateAttr(None)  # the contract's folder (spec_of), to find the repo
    _env: CommandEnv | None = PrivateAttr(None)

    @field_validator("env")
    @classmethod
    def _passable_names(cls, names: list[str]) -> list[str]:
        problems = [why for why in map(name_problem, names) if why]
        if problems:
            raise ValueError("; ".join(problems))
        return names

    @field_validator("path")
    @classmethod
    def _absolute_dirs(cls, path: str | list[str]) -> str | list[str]:
        relative = [d for d in path if not d.startswith("/")] if isinstance(path, list) else []
        if relative:
            raise ValueError(f"{', '.join(map(repr, relative))}: PATH entries must be absolute"
                             " (a relative one would search the candidate's directory)")
        return path

    def command_env(self) -> CommandEnv:
        """PATH, pass-through variables and read-only binds for every sandboxed command;
        resolved once per spec (a `ratchet run`), when the first command runs."""
        if self._env is None:
            from .environment import CommandEnv

            repo = gitops.repo_root(self._root) if self._root is not None else None
            self._env = CommandEnv.build(self.path, self.env, repo)
        return self._env

    @field_validator("editable", "readonly")
    @classmethod
    def _plain_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            parts = PurePosixPath(path).parts
            if (not parts or PurePosixPath(path).is_absolute() or ".." in parts
                    or ".git" in parts or "\\" in path or "\n" in path):
                raise ValueError(f"{path!r}: use a relative path inside the repository")
        return paths

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, metrics: dict[str, NamedMetric]) -> dict[str, NamedMetric]:
        for name in metrics:
            if not constraints_mod.NAME.fullmatch(name):
                raise ValueError(f"metric name {name!r}: use letters, digits and '_'")
            if name in (*constraints_mod.BUILTIN, constraints_mod.PRIMARY):
                raise ValueError(f"metric name {name!r} is built in: pick another name")
        return metrics

    @model_validator(mode="after")
    def _constraints_parse(self) -> GenericSpec:
        for text in self.constraints:
            constraints_mod.parse(text, self.metric_names())
        return self

    def metric_names(self) -> list[str]:
        """Every name a constraint may use: the primary, the declared, the built-ins."""
        return [constraints_mod.PRIMARY, *self.metrics, *constraints_mod.BUILTIN]

    def parsed_constraints(self) -> list[constraints_mod.Constraint]:
        return [constraints_mod.parse(text, self.metric_names()) for text in self.constraints]

    @model_validator(mode="after")
    def _editable_is_not_git_metadata(self) -> GenericSpec:
        special = [p for p in self.editable if PurePosixPath(p).name in GIT_SPECIAL]
        if special:
            raise ValueError(f"{', '.join(special)} cannot be editable: git runs the drivers"
                             " they name when it commits")
        both = sorted(set(self.editable) & set(self.readonly))
        if both:
            raise ValueError(f"{', '.join(both)} cannot be both editable and read-only")
        return self


def is_time_metric(spec: GenericSpec, unit: str, lower_is_better: bool) -> bool:
    """The plausibility rule applies to times where lower is better."""
    if not lower_is_better:
        return False
    if spec.metric_is_time is not None:
        return spec.metric_is_time
    return unit.strip().lower() in TIME_UNITS


def spec_of(exp: Experiment) -> GenericSpec:
    """The contract's generic block; a bad one is one clear message naming the field."""
    try:
        spec = GenericSpec.model_validate(exp.generic or {})
    except ValidationError as exc:
        raise RatchetError(f"{exp.root / 'experiment.json'}: {explain(exc)}") from None
    spec._root = exp.root
    if spec.relative_to == "experiment":
        spec = _from_repository(spec, exp.root)
    return spec


def _from_repository(spec: GenericSpec, folder: Path) -> GenericSpec:
    """An experiment-relative contract seen from the repository root: paths prefixed with
    the folder, commands run there (`{target}` stays the path as the contract names it)."""
    repo = gitops.repo_root(folder)
    try:
        prefix = folder.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        raise RatchetError(f"{folder} is not inside its repository {repo}") from None
    if prefix == ".":
        return spec

    def where(command: str | None) -> str | None:
        if command is None:
            return None
        return f"cd {shlex.quote(prefix)} && " + command.replace("{target}", spec.editable[0])

    moved = spec.model_copy(update={
        "editable": [f"{prefix}/{p}" for p in spec.editable],
        "readonly": [f"{prefix}/{p}" for p in spec.readonly],
        "run_command": where(spec.run_command), "check_command": where(spec.check_command),
        "setup_check": where(spec.setup_check)})
    moved._root = spec._root
    return moved


def explain(exc: ValidationError) -> str:
    """The first problem of a validation error as one line: the field and why."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"field 'generic.{where}': {msg}" if where else msg


def read_metric(output: str, spec: MetricSpec) -> float | None:
    """The metric in a run's output, or None when there is none (a crash, for the loop)."""
    value: Any = None
    if spec.kind == "last_number":
        numbers = NUMBER.findall(output)
        value = numbers[-1] if numbers else None
    elif spec.kind == "regex":
        matches = list(re.finditer(spec.pattern or "", output, re.MULTILINE))
        value = matches[-1].group(1) if matches else None
    else:
        value = _json_key(output, spec.key or "")
    try:
        number = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def metric_from_output(stdout: str, stderr: str, spec: MetricSpec) -> float | None:
    """stdout first; stdout + stderr only when stdout holds none (0.0 is a value)."""
    value = read_metric(stdout, spec)
    if value is None:
        value = read_metric(stdout + ("\n" if stdout else "") + stderr, spec)
    return value


def read_channel(data: bytes | None) -> tuple[float | None, str]:
    """(value, "") from the result channel; (None, "") when nothing was written;
    (None, why) when it holds anything but exactly one finite number."""
    if not data or not data.strip():
        return None, ""
    if len(data) > CHANNEL_MAX:
        return None, f"{len(data)} bytes on the result channel (one number expected)"
    try:
        words = data.decode("ascii").split()
    except UnicodeDecodeError:
        return None, f"non-ASCII bytes on the result channel: {data[:40]!r}"
    if len(words) != 1:
        return None, f"{len(words)} values on the result channel (exactly one expected):" \
                     f" {' '.join(words)[:60]}"
    if not NUMBER.fullmatch(words[0]):
        return None, f"not a number on the result channel: {words[0][:40]!r}"
    number = float(words[0])
    if not math.isfinite(number):
        return None, f"not a finite number on the result channel: {words[0]!r}"
    return number, ""


def _json_key(output: str, key: str) -> Any:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            node: Any = json.loads(line)
        except json.JSONDecodeError:
            continue
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None
