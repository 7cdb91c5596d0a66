"""The `ratchet` command: argument handling only; the work lives in the modules it calls.

Imports of the working modules happen inside each command: `ratchet --help`, `scores` or
`models` must not pay for scipy, numpy, the model SDKs or the loop (issue "a loop that costs
nothing": at most 0.3 s and 60 MiB per non-loop command; tests/test_cli.py guards it).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .display import run_cli_guarded

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["legacy_main", "main", "run_cli_guarded"]


@cache
def console() -> Console:
    """stdout console, made on first use so `--help` never imports rich."""
    from rich.console import Console

    # piped or redirected: lines are never wrapped at 80 columns (nor coloured, as rich
    # only colours a terminal)
    return Console() if sys.stdout.isatty() else Console(soft_wrap=True)


class GuardedGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return run_cli_guarded(lambda: super(GuardedGroup, self).invoke(ctx))


@click.group(cls=GuardedGroup)
@click.version_option(__version__, prog_name="ratchet")
@click.option("--root", type=click.Path(exists=True, file_okay=False), envvar="RATCHET_ROOT",
              help="the project to look in for experiments, before the current directory and"
                   " its parents (default $RATCHET_ROOT)")
@click.pass_context
def main(ctx: click.Context, root: str | None) -> None:
    """ratchetloop: the model proposes, the evaluator decides, memory keeps the judgment."""
    if root is not None:  # discovery (experiment.find_experiment_dir) reads $RATCHET_ROOT
        before = os.environ.get("RATCHET_ROOT")
        os.environ["RATCHET_ROOT"] = os.path.abspath(root)
        ctx.call_on_close(lambda: _restore_env("RATCHET_ROOT", before))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@main.command()
@click.argument("experiment")
@click.option("--model", "-m", default=None, help="proposer: tuner (default), gpt-..., claude-...,"
              " ollama:<m>, openai-compatible:<m>@<url>, claude-cli, codex-cli, replay:<file>;"
              " several, comma-separated: a bandit picks one per request")
@click.option("--loop", "iterations", type=click.IntRange(min=1), default=None,
              help="run N more iterations (default 10; on resume they come on top of those"
                   " done)")
@click.option("--until", type=click.IntRange(min=0), default=None,
              help="run until iteration N in total (not with --loop); --until 0 runs none:"
                   " it only restores and records what a killed run left")
@click.option("--temperature", type=float, default=None)
@click.option("--max-output-tokens", type=int, default=None, help="per reply")
@click.option("--max-cost", type=float, default=None, help="stop before spending more USD")
@click.option("--max-tokens", type=int, default=None, help="stop before using more tokens")
@click.option("--max-minutes", type=float, default=None, help="wall-clock limit")
@click.option("--patience", type=int, default=None, help="stop after N iterations without a win")
@click.option("--target", type=float, default=None, help="stop once the best reaches this score")
@click.option("--trial-seconds", type=float, default=None, help="generic mode: a fixed time"
              " budget per run ($RATCHET_TRIAL_SECONDS; stopped at it, killed after a grace)")
@click.option("--parallel", type=click.IntRange(min=1), default=None,
              help="up to K proposals in flight at once (default 1); evaluations still take"
                   " one benchmark slot per host")
@click.option("--pipeline/--no-pipeline", default=None,
              help="request the next proposal while one is evaluated (default: on for"
                   " remote models; the next prompt then does not know the last result)")
@click.option("--outer-every", type=click.IntRange(min=1), default=None,
              help="every K iterations an outer step reads the trace and rewrites the"
                   " search strategy (STRATEGY.md; default off)")
@click.option("--outer-model", default=None,
              help="the outer step's model (any --model backend; alone: K=10); without it,"
                   " a rule-based controller over the tuner's knobs")
@click.option("--review", metavar="MODEL", default=None,
              help="a reviewer model reads each candidate's diff before it is evaluated and"
                   " may veto it (gaming, benchmark-specialised, no-op, a broken rule)")
@click.option("--review-wins", is_flag=True,
              help="with --review: review each proven winner again before its commit")
@click.option("--novelty", type=click.FloatRange(0, 1, min_open=True), is_flag=False,
              flag_value=0.97, default=None, metavar="[THRESHOLD]",  # DEFAULT_THRESHOLD
              help="skip candidates this similar to code already evaluated (share of"
                   " tokens, 0-1; alone: 0.97)")
@click.option("--ray", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="evaluate on the bench nodes of a Ray cluster (ADDRESS, default: the one"
                   " running here or $RAY_ADDRESS); pip install 'ratchetloop[ray]'")
def run(experiment: str, **flags: Any) -> None:
    """Run the loop on EXPERIMENT (a name under experiments/ or a folder).

    Exit status: 0 when the run completed or hit a stop condition, 130 after Ctrl-C (the
    record is finished first), 2 for a setup problem. Every flag not used here is the
    loop.Options field of the same name."""
    if flags["iterations"] is not None and flags["until"] is not None:
        raise click.UsageError("--loop N (N more) and --until N (N in total): give one")
    from . import experiment as experiment_mod
    from .display import LiveReporter, print_summary
    from .generic import session_parts
    from .loop import Options, run_loop
    from .proposers import registry
    from .seccomp import make_undumpable

    make_undumpable()  # the keys in our memory stay out of reach of the processes we start
    exp = experiment_mod.load(experiment)
    trial_seconds = flags.pop("trial_seconds")
    if trial_seconds is not None:
        from .generic.trialtime import set_trial_seconds

        set_trial_seconds(exp, trial_seconds)
    proposer = registry.resolve(flags.pop("model"), exp, temperature=flags.pop("temperature"),
                                max_tokens=flags.pop("max_output_tokens"))
    announcement = getattr(proposer, "announcement", None)
    if announcement:
        console().print(announcement, style="cyan", markup=False, highlight=False)
    options = Options.from_flags(flags)
    until = options.until
    with LiveReporter(console(), exp, proposer.name, options.iterations, until=until) as live:
        reporter, workspace = session_parts(exp, live)  # generic: branch, results.tsv
        summary = run_loop(exp, proposer, options, reporter, workspace)
        live.finished(summary.stop_reason)
    print_summary(console(), exp, summary)
    if summary.interrupted:
        sys.exit(130)


@main.command()
@click.argument("experiment")
def seed(experiment: str) -> None:
    """Reset candidate, SCORES, MEMORY and runs/; keep git history and winners/."""
    from .experiment import find_experiment_dir
    from .seed import reset

    for line in reset(find_experiment_dir(experiment)):
        console().print(line, markup=False, highlight=False)


@main.command()
@click.argument("experiment")
def scores(experiment: str) -> None:
    """Print the scoreboard (rendered from SCORES.json)."""
    from . import experiment as experiment_mod
    from . import scores as scores_mod

    exp = experiment_mod.load(experiment)  # plain text: valid Markdown, also when piped
    click.echo(scores_mod.load(exp.root, exp.name, exp.unit, exp.direction).render(), nl=False)


@main.command()
@click.argument("experiment")
@click.option("--last", "-n", default=None, type=int, help="only the last N (table: 30)")
@click.option("--json", "as_json", is_flag=True, help="every attempt as a JSON list")
@click.option("--csv", "as_csv", is_flag=True, help="every attempt as CSV")
def history(experiment: str, last: int | None, as_json: bool, as_csv: bool) -> None:
    """Every attempt: status, score, note, failure (--json / --csv to export)."""
    from . import experiment as experiment_mod

    exp = experiment_mod.load(experiment)
    if as_json or as_csv:
        from . import views

        if as_json and as_csv:
            raise click.UsageError("--json or --csv, not both")
        rows = views.export_rows(exp)[-last:] if last else views.export_rows(exp)
        click.echo(views.to_json(rows) if as_json else views.to_csv(rows), nl=False)
        return
    from .display import history_table

    console().print(history_table(exp, last or 30))


@main.command()
@click.argument("experiment")
@click.argument("attempt", type=int)
def show(experiment: str, attempt: int) -> None:
    """One attempt in full: prompt, reply, code, diff, security, logs, decision."""
    from . import experiment as experiment_mod
    from .views import attempt_sections, plain

    sections = attempt_sections(experiment_mod.load(experiment), attempt)
    if not sys.stdout.isatty():
        click.echo(plain(sections), nl=False)
        return
    from .display import print_sections

    print_sections(console(), sections)


@main.command()
@click.argument("experiment", required=False)
def status(experiment: str | None) -> None:
    """Is a run going on: pid, iteration k/N, phase, elapsed, best, tokens and cost."""
    from . import status as status_mod

    if experiment is None:
        click.echo("\n".join(status_mod.overview()))
        return
    from .experiment import find_experiment_dir

    folder = find_experiment_dir(experiment)
    click.echo("\n".join(status_mod.describe(folder)))


@main.command()
@click.argument("experiment")
def best(experiment: str) -> None:
    """Show the best winner's row and source."""
    from . import experiment as experiment_mod
    from .winners import best_source

    exp = experiment_mod.load(experiment)
    header, source = best_source(exp)  # plain: `ratchet best linear > k.c` compiles
    click.echo(header)
    click.echo(source)


@main.command()
@click.argument("experiment")
@click.argument("commit", required=False)
def rollback(experiment: str, commit: str | None) -> None:
    """Restore the candidate file to the best winner (or to COMMIT's archived winner)."""
    from . import experiment as experiment_mod
    from .winners import rollback as do_rollback

    exp = experiment_mod.load(experiment)
    console().print(do_rollback(exp, commit), markup=False, highlight=False)


@main.command()
@click.argument("experiment")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder for report.html and report.png (default: the experiment's folder)")
@click.option("--open", "open_page", is_flag=True, help="open report.html in a web browser")
def report(experiment: str, out: Path | None, open_page: bool) -> None:
    """Write report.html (self-contained, works offline) and report.png: progress, every
    attempt, per-case speedups, failures, and each winner's note, ratio and diff."""
    from . import experiment as experiment_mod
    from .report import write_report

    html_path, png_path = write_report(experiment_mod.load(experiment), out)
    click.echo(f"wrote {html_path}\nwrote {png_path}")
    if open_page:
        import webbrowser

        if not webbrowser.open(html_path.resolve().as_uri()):
            click.echo("no web browser found: open the file above yourself", err=True)


@main.command()
@click.option("--probe", "probe_urls", multiple=True, help="also check an OpenAI-compatible URL")
def models(probe_urls: tuple[str, ...]) -> None:
    """Which model backends are usable here (keys shown as set/missing, never values)."""
    from .doctor import model_rows, rows_table

    console().print(rows_table("models", model_rows(probe_urls)))


@main.command()
@click.argument("experiment", required=False)
@click.option("--ray", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="also list a Ray cluster's nodes and bench slots (default: the one"
                   " running here or $RAY_ADDRESS)")
def doctor(experiment: str | None, ray: str | None) -> None:
    """Check toolchains, sandbox layers, keys and servers (for EXPERIMENT if given)."""
    from .doctor import doctor_rows, rows_table

    exp = None
    if experiment:  # pydantic only when there is a contract to validate
        from . import experiment as experiment_mod

        exp = experiment_mod.load(experiment)
    console().print(rows_table("doctor", doctor_rows(exp, ray=ray)))


@main.command()
@click.argument("name", required=False)
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--list", "listing", is_flag=True, help="list the shipped experiments")
def new(name: str | None, directory: Path | None, listing: bool) -> None:
    """Copy shipped experiment NAME into DIRECTORY (default: experiments/NAME here)."""
    from . import shipped

    if listing:
        click.echo("\n".join(shipped.describe()))
        return
    if name is None:
        raise click.UsageError("name a shipped experiment (`ratchet new --list` shows them)")
    folder = shipped.new(name, directory)
    click.echo(f"created {folder}\nrun it with: {shipped.run_hint(folder)}")


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
@click.option("--named-metric", multiple=True, metavar="NAME=REGEX",
              help="also read this secondary metric from the output (repeatable)")
@click.option("--constraint", multiple=True, metavar="'NAME<=NUMBER'",
              help="reject any candidate breaking this bound (repeatable; built-ins:"
                   " wall_seconds, cpu_seconds, peak_rss_mb)")
@click.option("--env", "env", multiple=True, metavar="NAME",
              help="pass this variable to every command (repeatable; value read at run time)")
@click.option("--directives", default=None, help="program.md text or file")
@click.option("--from-research", type=click.Path(exists=True), help="import a research.json")
@click.option("--force", is_flag=True, help="overwrite an existing contract")
@click.option("--explore", is_flag=True, help="a model reads the repository and proposes the"
              " contract (needs --model; other flags override what it proposes)")
@click.option("--model", "-m", default=None, help="with --explore: the model that explores")
@click.option("--yes", "-y", is_flag=True, help="with --explore: write without asking")
def init(**flags: Any) -> None:
    """Set up the loop for any file + metric in this git repository (.ratchet/<tag>/)."""
    from .generic.cli import init_command

    console().print(init_command(flags), markup=False, highlight=False)

