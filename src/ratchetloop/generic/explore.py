"""`ratchet init --explore --model M`: a model reads the repository and proposes the contract.

The anchor is autoresearch's setup phase, where one agent studies the structure and stack
and another the metrics and benchmarks. Here that is three requests, each seeing the same
bounded view of the repository (repoview.py; no secret ever reaches it):

1. structure and stack: languages, entry points, where the hot code lives, how to run and
   test it;
2. metrics and benchmarks (with 1's notes): the command that prints a number, the exact
   line it prints, which way is better, how long a run takes, what a setup check is;
3. the contract: one JSON object, from the two notes and the file listing (not the files
   again, so the last request is small).

Why not one request: a single reply has to explore and commit at once, and its JSON then
carries the exploring; two focused questions give notes a person can read in explore.json
to see why the model chose what it chose, and the last request only has to synthesise,
which is where a JSON reply is most reliable. The cost is the view sent twice (it is capped
at repoview.TOTAL_MAX characters, so a few thousand tokens).

The proposal goes through the code manual `ratchet init` uses (init_project with
check_only: the same tag, file and GenericSpec checks), so a bad one is one clear line and
nothing is written. The user sees it and the equivalent `ratchet init` command, confirms
(or --yes), the setup check runs in the sandbox on a fresh copy of HEAD's tracked files
(as `ratchet run` runs it), and only then is .ratchet/<tag>/ written, with explore.json:
the view's summary, every prompt and reply, the usage and the cost. Keys are never in it.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from .. import gitops, replyjson, sandbox
from ..errors import RatchetError
from ..files import atomic_write_json
from ..proposers.base import CACHE_BREAK
from ..scores import UsageTotals
from . import repoview
from .contract import MetricSpec
from .init import init_project

if TYPE_CHECKING:
    from ..proposers.base import Proposer

SETUP_TAIL = 2_000  # characters of a failed setup check's output shown
Confirm = Callable[["Exploration", dict[str, Any]], bool]

ROLE = ("You are setting up ratchetloop on a repository: a loop in which a model edits a few"
        " files, a command measures one number, and only measured improvements are kept.")
STRUCTURE = ("Study the STRUCTURE and STACK of this repository. In at most 250 words: the"
             " languages and frameworks; how it is built, run and tested (exact commands);"
             " its entry points; which files hold the code whose speed, size or quality"
             " matters; what a run needs (dependencies, data, hardware).")
METRICS = ("Study the METRICS and BENCHMARKS of this repository. In at most 250 words: the"
           " scripts or commands that measure something (benchmarks, evaluations, training"
           " runs); for the best one, the exact command, the exact output line that carries"
           " the number and a regex for it, whether lower or higher is better, the unit,"
           " how long one run takes; which files a model should edit to move that number"
           " and which it must only read (the benchmark itself, data, tests); a quick command"
           " that fails when the environment is not ready (a setup check); a command that"
           " checks the code still works (tests).")
SCHEMA = """{
  "tag": "short name: letters, digits, '.', '_', '-'",
  "run_command": "shell command, run from the repository root, that prints the metric",
  "metric": {"kind": "regex", "pattern": "one capture group, e.g. time_ms=(\\\\S+)"},
  "direction": "lower_is_better or higher_is_better",
  "unit": "e.g. ms, s, %, or empty",
  "editable": ["files the model may change"],
  "readonly": ["files it may read but never change, e.g. the benchmark"],
  "timeout_seconds": 300,
  "setup_check": "quick command that exits 0 when the environment is ready, or null",
  "check_command": "command every improvement must pass (tests), or null",
  "goal": "one sentence: what to improve",
  "hypotheses": ["ideas worth trying"],
  "rationale": "why this command, metric and these files"
}"""
CONTRACT = ("Write the contract for this repository from the notes below, as ONE JSON object"
            " and nothing else, with exactly these keys:\n" + SCHEMA + "\n\nThe metric may"
            " instead be {\"kind\": \"last_number\"} (the last number printed) or {\"kind\":"
            " \"json_key\", \"key\": \"a.b\"} (a key of the last JSON line printed). Name only"
            " files from the listing; editable files must not be the benchmark that measures"
            " them.")


class Proposed(BaseModel):
    """The contract as the model writes it; anything else in its JSON is ignored, and
    autoresearch's research.json names (modifiable_files...) are understood too."""

    model_config = ConfigDict(extra="ignore")

    tag: str
    run_command: str = Field(min_length=1)
    metric: MetricSpec = Field(default_factory=MetricSpec)
    direction: Literal["lower_is_better", "higher_is_better"] = Field(
        validation_alias=AliasChoices("direction", "metric_direction"))
    unit: str = ""
    editable: list[str] = Field(min_length=1, validation_alias=AliasChoices(
        "editable", "modifiable_files"))
    readonly: list[str] = Field(default_factory=list, validation_alias=AliasChoices(
        "readonly", "readonly_files"))
    timeout_seconds: float = Field(300.0, gt=0, le=86_400)
    setup_check: str | None = None
    check_command: str | None = None
    goal: str = ""
    hypotheses: list[str] = Field(default_factory=list)
    rationale: str = ""

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text.startswith(("lower", "min", "less", "decrease", "smaller")):
            return "lower_is_better"
        if text.startswith(("higher", "max", "more", "increase", "greater", "larger")):
            return "higher_is_better"
        return value

    def values(self) -> dict[str, Any]:
        """init_project's keyword arguments."""
        directives = None
        if self.goal or self.hypotheses:
            ideas = "".join(f"- {h}\n" for h in self.hypotheses) or "- (list ideas worth trying)\n"
            directives = (f"# Research directives\n\n## Goal\n{self.goal or self.rationale}\n\n"
                          f"## Hypotheses to explore\n{ideas}\n## Constraints\n"
                          "- keep the behaviour the run command checks intact\n")
        out = {"tag": self.tag, "editable": self.editable, "readonly": self.readonly,
               "run_command": self.run_command, "metric": self.metric,
               "higher_is_better": self.direction == "higher_is_better",
               "timeout": self.timeout_seconds, "unit": self.unit,
               "setup_check": self.setup_check or None,
               "check_command": self.check_command or None, "directives": directives}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class Step:
    name: str
    prompt: str
    reply: str = ""
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass
class Exploration:
    """What the explorer asked and was told, and the contract it proposes."""

    model: str
    view: repoview.RepoView
    steps: list[Step] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)
    proposal: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] | None = None  # the setup check: command, ok, how it ended, log tail

    def ask(self, proposer: Proposer, name: str, prompt: str) -> str:
        """One request; its usage counted also when it fails (it may have been billed)."""
        from ..proposers.base import ProposalFailed

        step = Step(name, prompt)
        self.steps.append(step)
        try:
            proposal = proposer.propose(prompt)
        except ProposalFailed as exc:
            self._count(step, exc.usage)
            raise RatchetError(f"explore ({name} request): {exc}; {self.cost_line()}") from None
        self._count(step, proposal.usage)
        step.reply = proposal.text
        return proposal.text

    def _count(self, step: Step, usage: Any) -> None:
        self.usage.add(usage)
        step.usage = {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "cached_prompt_tokens": usage.cached_prompt_tokens,
                      "cost_usd": usage.cost_usd}

    def cost_line(self) -> str:
        u = self.usage
        return (f"explorer: {len(self.steps)} request(s) to {self.model}, {u.total_tokens}"
                f" tokens (prompt {u.prompt_tokens}, completion {u.completion_tokens}),"
                f" estimated cost {u.cost_text()}")

    def record(self, folder: Path, values: dict[str, Any]) -> Path:
        """explore.json beside the contract: the view, every prompt and reply, the usage."""
        path = folder / "explore.json"
        atomic_write_json(path, {
            "model": self.model, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "view": self.view.summary(),
            "steps": [vars(s) for s in self.steps], "proposal": self.proposal,
            "contract": {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v
                         for k, v in values.items() if k != "directives"},
            "setup_check": self.setup, "usage": self.usage.model_dump()})
        return path


def explore(repo: Path, model: str | Proposer | None, *, tag: str | None = None) -> Exploration:
    """Ask the model about `repo` (three requests, see the module doc) for a contract."""
    repo = gitops.repo_root(Path(repo))
    proposer = resolve(model)
    view = repoview.gather(repo)
    if not view.listing:
        raise RatchetError(f"{repo} has no tracked files to explore: commit your project first")
    found = Exploration(model=proposer.name, view=view)
    # the same prefix for both: backends with prompt caching pay for the view once
    shown = (f"{ROLE}\n\nTracked files ({view.total_files}):\n{view.listing_text()}\n\n"
             f"Key files:\n\n{view.files_text()}\n{CACHE_BREAK}\n")
    structure = found.ask(proposer, "structure", f"{shown}{STRUCTURE}\n")
    metrics = found.ask(proposer, "metrics", f"{shown}{METRICS}\n\nNotes on the structure"
                        f" and stack:\n{structure.strip()}\n")
    wanted = f"\nUse the tag {tag!r}." if tag else ""
    reply = found.ask(proposer, "contract", f"{ROLE}\n\n{CONTRACT}{wanted}\n\nNotes on the"
                      f" structure and stack:\n{structure.strip()}\n\nNotes on the metrics and"
                      f" benchmarks:\n{metrics.strip()}\n\nTracked files ({view.total_files}):\n"
                      f"{view.listing_text()}\n")
    try:
        found.proposal = parse_json(reply)
        proposed = Proposed.model_validate(found.proposal)
    except (RatchetError, ValidationError) as exc:
        why = explain(exc) if isinstance(exc, ValidationError) else str(exc)
        raise RatchetError(f"the model's contract is not usable: {why}; nothing written;"
                           f" {found.cost_line()}") from None
    found.values = proposed.values()
    return found


def resolve(model: str | Proposer | None) -> Proposer:
    """A proposer for a --model string (a stub experiment: resolving reads only `prices`)."""
    if model is not None and not isinstance(model, str):
        return model
    if not model or model.strip() == "tuner":
        raise RatchetError("--explore needs a language model (--model, e.g. gpt-4.1-mini or"
                           " openai-compatible:<m>@<url>): the tuner cannot read a repository")
    from ..experiment import Experiment
    from ..proposers import registry

    stub = Experiment.model_construct(name="explore", prices={}, root=Path("."))  # type: ignore[call-arg]
    return registry.resolve(model, stub)


def parse_json(text: str) -> dict[str, Any]:
    """The JSON object in a reply: the largest one (models wrap JSON in prose, or show a
    small example before the answer)."""
    found = replyjson.largest(text)
    if found is None:
        head = " ".join(text.split())[:80]
        raise RatchetError(f"the reply holds no JSON object ({head!r})")
    return found


def explain(exc: ValidationError) -> str:
    """The first problem of the model's JSON as one line: the field and why."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"field {where!r}: {msg}" if where else msg


def write(found: Exploration, values: dict[str, Any], repo: Path, *, confirm: Confirm,
          force: bool = False) -> Path:
    """Check the contract as `ratchet init` does, confirm, run the setup check, write."""
    repo = gitops.repo_root(Path(repo))
    secret = [p for p in values.get("editable", []) + values.get("readonly", [])
              if repoview.is_secret_path(p)]
    try:
        if secret:
            raise RatchetError(f"{', '.join(secret)} look(s) like a secret: a contract's files"
                               " go into every prompt")
        init_project(repo, force=force, check_only=True, **values)
    except RatchetError as exc:
        raise RatchetError(f"the proposed contract is not usable: {exc}; nothing written;"
                           f" {found.cost_line()}") from None
    if not confirm(found, values):
        raise RatchetError("the proposed contract was declined: nothing written")
    if values.get("setup_check"):
        found.setup = setup_check(repo, values)
        if not found.setup["ok"]:
            raise RatchetError(
                f"setup check `{values['setup_check']}` failed ({found.setup['ended']}); nothing"
                f" written. Its output:\n{found.setup['log']}\nFix the project, or write this"
                f" contract by hand with another check:\n  {manual_command(values)}")
    folder = init_project(repo, force=force, **values)
    found.record(folder, values)
    return folder


def setup_check(repo: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The setup check in the sandbox on a fresh copy of HEAD's tracked files, with the
    environment `ratchet run` gives its commands (the loop runs it again at every start)."""
    from .environment import CommandEnv

    head = gitops.git(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).strip()
    if not head:
        raise RatchetError(f"{repo} has no commit yet: commit your files first")
    env = CommandEnv.build("inherit", values.get("env") or [], repo)
    with tempfile.TemporaryDirectory(prefix="ratchet-explore-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        gitops.export_tree(gitops.common_dir(repo), head, tree, Path(tmp) / "index")
        proc = sandbox.run(["/bin/sh", "-c", values["setup_check"]], cwd=tree,
                           timeout=float(values.get("timeout", 300.0)), artefacts=(),
                           readonly_inside=list(values.get("readonly", [])), env=env.env,
                           ro_paths=env.ro_paths)
    log = (proc.stdout + ("\n" + proc.stderr if proc.stderr else "")).strip()
    ended = ("timed out" if proc.timed_out else f"sandbox failed: {proc.error}" if proc.error
             else f"exit {proc.returncode}")
    return {"command": values["setup_check"], "ok": proc.ok, "ended": ended,
            "log": log[-SETUP_TAIL:]}


def metric_text(metric: MetricSpec) -> str:
    what = {"last_number": "the last number printed",
            "regex": f"group 1 of the last match of `{metric.pattern}`",
            "json_key": f"key `{metric.key}` of the last JSON line"}[metric.kind]
    where = {"auto": "the result channel if the command writes there, else",
             "fd": "only the result channel", "output": "only the output:"}[metric.channel]
    return what if metric.channel == "fd" and metric.kind == "last_number" else f"{where} {what}"


def rows(found: Exploration, values: dict[str, Any]) -> list[tuple[str, str]]:
    """The contract as a person reads it, field by field."""
    metric = values.get("metric") or MetricSpec()
    out = [("tag", values["tag"]), ("run", values["run_command"]),
           ("metric", metric_text(metric)),
           ("direction", "higher is better" if values.get("higher_is_better")
            else "lower is better"),
           ("unit", values.get("unit") or "-"), ("editable", ", ".join(values["editable"])),
           ("read-only", ", ".join(values.get("readonly", [])) or "-"),
           ("timeout", f"{values.get('timeout', 300.0):g} s per run"),
           ("setup check", values.get("setup_check") or "- (none proposed)"),
           ("check", values.get("check_command") or "- (none: winners are not tested)"),
           ("why", str(found.proposal.get("rationale") or "-")),
           ("by hand", manual_command(values)), ("cost", found.cost_line())]
    return [(k, " ".join(str(v).split()) if k != "by hand" else v) for k, v in out]


def manual_command(values: dict[str, Any]) -> str:
    """The `ratchet init` command that writes the same contract."""
    args = ["ratchet", "init", "--tag", values["tag"]]
    for path in values["editable"]:
        args += ["--edit", path]
    for path in values.get("readonly", []):
        args += ["--read", path]
    args += ["--run", values["run_command"]]
    metric = values.get("metric") or MetricSpec()
    if metric.kind == "regex":
        args += ["--metric-regex", metric.pattern or ""]
    elif metric.kind == "json_key":
        args += ["--metric-json", metric.key or ""]
    if metric.channel == "fd":
        args.append("--metric-fd")
    args.append("--higher-is-better" if values.get("higher_is_better") else "--lower-is-better")
    args += ["--timeout", f"{values.get('timeout', 300.0):g}"]
    for flag, key in (("--unit", "unit"), ("--setup-check", "setup_check"),
                      ("--check", "check_command")):
        if values.get(key):
            args += [flag, values[key]]
    return shlex.join(args)


def ask_on_terminal(yes: bool) -> Confirm:
    """The CLI's confirmation: show the contract (a table on a terminal, plain lines when
    piped), then ask unless --yes; a "no" ends the command with nothing written."""
    import sys

    import click

    def confirm(found: Exploration, values: dict[str, Any]) -> bool:
        table = rows(found, values)
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.table import Table
            from rich.text import Text

            grid = Table(title="proposed contract", show_header=False)
            for key, value in table:  # model text: never read as markup
                grid.add_row(key, Text(value))
            Console().print(grid)
        else:
            click.echo("proposed contract:\n" + "".join(f"  {k}: {v}\n" for k, v in table),
                       nl=False)
        if yes or click.confirm("write it (after its setup check)?", default=True):
            return True
        click.echo("declined: nothing written")
        raise click.exceptions.Exit(1)

    return confirm
