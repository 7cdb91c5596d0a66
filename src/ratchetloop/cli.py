"""The `ratchet` command: argument handling only; the work lives in the modules it calls.

Imports of the working modules happen inside each command: `ratchet --help`, `scores` or
`models` must not pay for scipy, numpy, the model SDKs or the loop (issue "a loop that costs
nothing": at most 0.3 s and 60 MiB per non-loop command; tests/test_cli.py guards it).
"""

from __future__ import annotations

import sys
from functools import cache
from typing import TYPE_CHECKING, Any

import click

from .display import run_cli_guarded

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["legacy_main", "main", "run_cli_guarded"]


@cache
def console() -> Console:
    """stdout console, made on first use so `--help` never imports rich."""
    from rich.console import Console

    return Console()


class GuardedGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return run_cli_guarded(lambda: super(GuardedGroup, self).invoke(ctx))


@click.group(cls=GuardedGroup)
@click.version_option(package_name="ratchetloop")
def main() -> None:
    """ratchetloop: the model proposes, the evaluator decides, memory keeps the judgment."""


@main.command()
@click.argument("experiment")
@click.option("--model", "-m", default=None, help="proposer: tuner (default), gpt-..., claude-...,"
              " ollama:<m>, openai-compatible:<m>@<url>, claude-cli, codex-cli, replay:<file>")
@click.option("--loop", "iterations", default=10, show_default=True, help="iterations to run")
@click.option("--temperature", type=float, default=None)
@click.option("--max-output-tokens", type=int, default=None, help="per reply")
@click.option("--max-cost", type=float, default=None, help="stop before spending more USD")
@click.option("--max-tokens", type=int, default=None, help="stop before using more tokens")
@click.option("--max-minutes", type=float, default=None, help="wall-clock limit")
@click.option("--patience", type=int, default=None, help="stop after N iterations without a win")
@click.option("--target", type=float, default=None, help="stop once the best reaches this score")
def run(experiment: str, model: str | None, iterations: int, temperature: float | None,
        max_output_tokens: int | None, max_cost: float | None, max_tokens: int | None,
        max_minutes: float | None, patience: int | None, target: float | None) -> None:
    """Run the loop on EXPERIMENT (a name under experiments/ or a folder)."""
    from . import experiment as experiment_mod
    from .display import LiveReporter, print_summary
    from .generic import session_parts
    from .loop import Options, run_loop
    from .proposers import registry
    from .seccomp import make_undumpable

    make_undumpable()  # the keys in our memory stay out of reach of the processes we start
    exp = experiment_mod.load(experiment)
    proposer = registry.resolve(model, exp, temperature=temperature, max_tokens=max_output_tokens)
    announcement = getattr(proposer, "announcement", None)
    if announcement:
        console().print(f"[cyan]{announcement}[/]")
    options = Options(iterations=iterations, max_cost=max_cost, max_tokens=max_tokens,
                      max_seconds=max_minutes * 60 if max_minutes else None,
                      patience=patience, target=target)
    with LiveReporter(console(), exp, proposer.name, iterations) as live:
        reporter, workspace = session_parts(exp, live)  # generic: branch, results.tsv
        summary = run_loop(exp, proposer, options, reporter, workspace)
    print_summary(console(), exp, summary)


@main.command()
@click.argument("experiment")
def seed(experiment: str) -> None:
    """Reset candidate, SCORES, MEMORY and runs/; keep git history and winners/."""
    from .experiment import find_experiment_dir
    from .seed import reset

    for line in reset(find_experiment_dir(experiment)):
        console().print(line)


@main.command()
@click.argument("experiment")
def scores(experiment: str) -> None:
    """Print the scoreboard (rendered from SCORES.json)."""
    from . import experiment as experiment_mod
    from . import scores as scores_mod

    exp = experiment_mod.load(experiment)
    console().print(scores_mod.load(exp.root, exp.name, exp.unit, exp.direction).render(),
                  markup=False, highlight=False)


@main.command()
@click.argument("experiment")
@click.option("--last", "-n", default=30, show_default=True)
def history(experiment: str, last: int) -> None:
    """Every attempt: status, score, note, failure."""
    from . import experiment as experiment_mod
    from .display import history_table

    exp = experiment_mod.load(experiment)
    console().print(history_table(exp, last))


@main.command()
@click.argument("experiment")
def best(experiment: str) -> None:
    """Show the best winner's row and source."""
    from . import experiment as experiment_mod
    from .winners import best_source

    exp = experiment_mod.load(experiment)
    header, source = best_source(exp)
    console().print(header, highlight=False)
    click.echo(source)


@main.command()
@click.argument("experiment")
@click.argument("commit", required=False)
def rollback(experiment: str, commit: str | None) -> None:
    """Restore the candidate file to the best winner (or to COMMIT's archived winner)."""
    from . import experiment as experiment_mod
    from .winners import rollback as do_rollback

    exp = experiment_mod.load(experiment)
    console().print(do_rollback(exp, commit), highlight=False)


@main.command()
@click.option("--probe", "probe_urls", multiple=True, help="also check an OpenAI-compatible URL")
def models(probe_urls: tuple[str, ...]) -> None:
    """Which model backends are usable here (keys shown as set/missing, never values)."""
    from .doctor import model_rows, rows_table

    console().print(rows_table("models", model_rows(probe_urls)))


@main.command()
@click.argument("experiment", required=False)
def doctor(experiment: str | None) -> None:
    """Check toolchains, sandbox layers, keys and servers (for EXPERIMENT if given)."""
    from .doctor import doctor_rows, rows_table

    exp = None
    if experiment:  # pydantic only when there is a contract to validate
        from . import experiment as experiment_mod

        exp = experiment_mod.load(experiment)
    console().print(rows_table("doctor", doctor_rows(exp)))


def legacy_main() -> None:
    """`python loop.py <experiment> --model M --loop N [--temperature T]`, as the reference."""
    main(["run", *sys.argv[1:]], prog_name="loop.py")


@main.command()
@click.option("--tag", help="name of this project's loop (branch ratchet/<tag>)")
@click.option("--edit", "editable", multiple=True, help="file the model may edit (repeatable)")
@click.option("--read", "readonly", multiple=True, help="read-only context file (repeatable)")
@click.option("--run", "run_command", help="command that prints the metric")
@click.option("--metric-regex", default=None, help="regex with one group (default: last number)")
@click.option("--metric-json", default=None, help="JSON key of the last JSON line")
@click.option("--higher-is-better/--lower-is-better", default=None)
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.option("--unit", default=None, help="unit shown with the metric (e.g. us, %)")
@click.option("--setup-check", default=None, help="command that must pass before the loop")
@click.option("--check", default=None, help="command every winner must pass (e.g. your tests)")
@click.option("--metric-fd", is_flag=True, help="read the metric only from $RATCHET_RESULT_FD")
@click.option("--env", "env", multiple=True, metavar="NAME",
              help="pass this variable to every command (repeatable; value read at run time)")
@click.option("--directives", default=None, help="program.md text or file")
@click.option("--from-research", type=click.Path(exists=True), help="import a research.json")
@click.option("--force", is_flag=True, help="overwrite an existing contract")
def init(**flags: Any) -> None:
    """Set up the loop for any file + metric in this git repository (.ratchet/<tag>/)."""
    from .generic.cli import init_command

    console().print(init_command(flags), highlight=False)

