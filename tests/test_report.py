"""`ratchet report`: the page and the image of a real 20-iteration tuner run on linear and of
a real generic run, the page loaded in a real headless Chromium (Debian's `chromium`) with
the network cut off, so a panel that needed a CDN would be missing.

The browser's screenshots are kept in tests/artifacts/ (or $RATCHET_TEST_ARTIFACTS). Without
chromium the browser tests skip, unless RATCHET_REQUIRE_BROWSER=1 (set by .ci/run, which
installs chromium), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_ROOT, make_exp_repo, run_ratchet
from generic_helpers import calc_reply, make_repo
from matplotlib.image import imread

from ratchetloop import experiment as experiment_mod
from ratchetloop.cli import main
from ratchetloop.generic import session_parts
from ratchetloop.generic.contract import MetricSpec
from ratchetloop.generic.init import init_project
from ratchetloop.loop import Options, QuietReporter, run_loop
from ratchetloop.proposers.replay import ReplayProposer
from ratchetloop.proposers.tuner import TunerProposer
from ratchetloop.report import data as report_data
from ratchetloop.report import html as report_html
from ratchetloop.report.html import PANELS
from ratchetloop.report.style import FIXED

ARTIFACTS = Path(os.environ.get("RATCHET_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
HOSTILE = "five </script><b>bold</b> [/] keep a[i] $x$"
NEW_STATUS = "paused_by_operator"  # what a newer version might record: shown, never a crash


def chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("RATCHET_REQUIRE_BROWSER") == "1":
        pytest.fail("RATCHET_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run installs it)")


def browse(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a file:// URL; every network request fails (dead proxy, no DNS)."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--hide-scrollbars", "--virtual-time-budget=5000", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=180, check=True)


class Dom(HTMLParser):
    """The classes found inside each panel's div, and the winners table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.panel: str | None = None
        self.depth = 0
        self.classes: dict[str, Counter[str]] = {key: Counter() for key in PANELS}
        self.own: dict[str, list[str]] = {}
        self.winner_rows: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if self.panel is None and tag == "div" and a.get("id") in PANELS:
            self.panel, self.depth = str(a["id"]), 1
            self.own[self.panel] = classes
            return
        if self.panel is not None:
            self.classes[self.panel].update(classes)
            self.depth += tag == "div"
        if tag == "tr" and "winner-row" in classes:
            self.winner_rows.append(a.get("data-commit") or "")

    def handle_endtag(self, tag: str) -> None:
        if self.panel is not None and tag == "div":
            self.depth -= 1
            if self.depth == 0:
                self.panel = None


def rendered(page: Path, tmp: Path, name: str) -> tuple[Dom, str, np.ndarray]:
    """The page's DOM after its scripts ran, and a screenshot (kept as a test artefact)."""
    shot = tmp / f"{name}.png"
    dom_text = browse(page, tmp / "profile", "--window-size=1400,2400", f"--screenshot={shot}",
                      "--dump-dom").stdout
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / f"{name}.png")
    dom = Dom()
    dom.feed(dom_text)
    return dom, dom_text, image_rgb(shot)


def assert_every_panel(dom: Dom, attempts: int, winners: int, failures: bool) -> None:
    for key in PANELS:
        assert "js-plotly-plot" in dom.own.get(key, []), f"plotly never drew {key}"
        inside = dom.classes[key]
        assert inside["main-svg"] and inside["gtitle"], (key, inside.most_common(8))
    for key in ("best-iteration", "best-time", "best-cost"):
        assert dom.classes[key]["js-line"], key  # the best-so-far line was drawn
    assert dom.classes["attempts"]["point"] == attempts  # one marker per attempt
    assert dom.classes["heatmap"]["hm"] == (1 if winners else 0)
    assert dom.classes["failures"]["bars"] == (1 if failures else 0)
    assert len(dom.winner_rows) == winners


def image_rgb(path: Path) -> np.ndarray:
    pixels = imread(path)
    if pixels.dtype != np.uint8:
        pixels = (pixels * 255).round().astype(np.uint8)
    return pixels[..., :3]


def assert_has_content(pixels: np.ndarray) -> None:
    """Not blank: many colours, a fair share of non-white pixels, the winners' green."""
    flat = pixels.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.uint32) << 16) | (flat[:, 1].astype(np.uint32) << 8) | flat[:, 2]
    assert len(np.unique(packed)) > 50
    assert (flat < 240).any(axis=1).mean() > 0.03
    green = np.array([int(FIXED["accepted (best)"][i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(flat.astype(int) - green).sum(axis=1) <= 6).sum() > 30


# ------------------------------------------------------------------ the two real runs

@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A real 5-iteration tuner run on linear (two cases, small acceptance budget), then
    the real `ratchet report ... --open` process; $BROWSER records what it was asked to open."""
    root = tmp_path_factory.mktemp("report_linear")
    folder = make_exp_repo(root, "linear", cases=["small_nobias", "attnproj_bt4"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RATCHET_BENCH_LOCK", str(root / "bench.lock"))
        exp = experiment_mod.load(folder)
        summary = run_loop(exp, TunerProposer(exp), Options(iterations=5, drift_every=0))
    assert len(summary.outcomes) == 5, summary.stop_reason
    opener = root / "browser.sh"
    opener.write_text(f'#!/bin/sh\nprintf %s "$1" > {root / "opened.txt"}\n')
    opener.chmod(0o755)
    out = root / "out"
    proc = run_ratchet("report", str(folder), "--out", str(out), "--open", cwd=root,
                       env={"BROWSER": f"{opener} %s"})
    assert proc.returncode == 0, proc.stderr
    return folder, out, root


@pytest.fixture(scope="module")
def generic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real generic run: two winners (one note hostile), a rejection, failures, a
    duplicate, priced replies, and a budget stop recorded as `interrupted`; plus one record
    with a status and field types this version does not know."""
    root = tmp_path_factory.mktemp("report_generic")
    repo = make_repo(root)
    folder = init_project(repo, tag="calc", editable=["calc.py"], readonly=["score.py"],
                          run_command="python3 score.py",
                          metric=MetricSpec(kind="regex", pattern=r"cost=(\d+)"))

    def paid(text: str, cost: float) -> dict:
        return {"text": text, "usage": {"prompt_tokens": 900, "completion_tokens": 300,
                                        "cost_usd": cost}}

    outside = "File: score.py\n```python\nprint('cost=0')\n```\nNote: cheat on the metric\n"
    broken = "File: calc.py\n```python\ndef cost():\n    return oops\n```\nNote: broken idea\n"
    replies = [paid(calc_reply(5, HOSTILE), 0.01), paid(outside, 0.01),
               paid(calc_reply(20, "twenty"), 0.01), paid(broken, 0.01), paid(broken, 0.01),
               paid(broken, 0.01), paid(calc_reply(3, "three"), 0.01),
               paid(calc_reply(2, "two"), 5.0)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RATCHET_BENCH_LOCK", str(root / "bench.lock"))
        exp = experiment_mod.load(folder)
        reporter, workspace = session_parts(exp, QuietReporter())
        run_loop(exp, ReplayProposer(replies), Options(iterations=10, max_cost=1.0), reporter,
                 workspace)
    last = max(int(p.name) for p in (folder / "runs").iterdir())
    future = folder / "runs" / f"{last + 1:04d}"
    future.mkdir()
    (future / "attempt.json").write_text(json.dumps({
        "iteration": last + 1, "status": NEW_STATUS, "score": "fast", "usage": None,
        "seconds": [], "note": 7}))
    out = CliRunner().invoke(main, ["report", str(folder)])  # default: the tag's folder
    assert out.exit_code == 0, out.output
    return folder


# ------------------------------------------------------------------ in the browser

def test_linear_report_opens_in_chromium_with_every_panel(linear, tmp_path) -> None:
    folder, out, root = linear
    page = out / "report.html"
    assert (root / "opened.txt").read_text() == page.resolve().as_uri()  # --open
    scores = json.loads((folder / "SCORES.json").read_text())
    attempts = len(list((folder / "runs").glob("*/attempt.json")))
    assert attempts == 5 and scores["rows"], "the tuner found no winner in 5 iterations"
    dom, text, pixels = rendered(page, tmp_path, "report-linear")
    failed = scores["counts"]["failed"] > 0
    assert_every_panel(dom, attempts, len(scores["rows"]), failures=failed)
    assert dom.winner_rows == [r["commit"] for r in scores["rows"]]
    assert "matmul_forward" in text  # the winners' diffs are in the page
    assert_has_content(pixels)


def test_generic_report_opens_in_chromium_with_every_panel(generic, tmp_path) -> None:
    page = generic / "report.html"
    scores = json.loads((generic / "SCORES.json").read_text())
    attempts = len(list((generic / "runs").glob("*/attempt.json")))
    dom, text, pixels = rendered(page, tmp_path, "report-generic")
    assert_every_panel(dom, attempts, len(scores["rows"]), failures=True)
    legend = text.split('class="legend"', 1)[1]
    for status in ("interrupted", NEW_STATUS, "duplicate", "rejected",
                   "failed: outside_editable", "failed: crash"):
        assert f">{status}</text>" in legend, status
    # a model's note is text on the page, never markup or script
    assert "five &lt;/script&gt;&lt;b&gt;bold&lt;/b&gt; [/] keep a[i] $x$" in text
    assert "<b>bold" not in text
    assert_has_content(pixels)


# ------------------------------------------------------------------ the page and the image

@pytest.mark.parametrize("which", ["linear", "generic"])
def test_page_is_self_contained_and_png_has_every_panel(which, request) -> None:
    folder = request.getfixturevalue("generic") if which == "generic" else None
    out = folder if folder is not None else request.getfixturevalue("linear")[1]
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "<link" not in page  # nothing fetched
    assert page.count("Plotly.newPlot(") == len(PANELS)
    pixels = image_rgb(out / "report.png")
    assert pixels.shape[:2] == (900, 1440)
    assert_has_content(pixels)


def test_report_data_of_the_generic_run(generic) -> None:
    data = report_data.gather(experiment_mod.load(generic))
    assert data.mode == "generic"
    cats = [a.category for a in data.attempts]
    assert cats[0] == "accepted (best)" and cats[-2:] == ["interrupted", NEW_STATUS]
    assert {"failed: outside_editable", "failed: crash", "duplicate", "rejected"} <= set(cats)
    assert data.attempts[-1].score is None and data.attempts[-1].note == "7"
    costs = [a.cost_usd for a in data.attempts]
    assert costs == sorted(costs) and costs[-1] > 0.05  # cumulative, priced replies
    assert [p.score for p in data.best_path] == [10, 5, 3, 3]  # seed, two winners, held
    first, second = data.winners
    assert (first.previous, second.previous) == ("seed", first.commit)
    assert first.note == HOSTILE and first.ratio == 0.5
    assert "-    base = 10" in (first.diff or "") and "+    return 5" in (first.diff or "")
    assert "-    return 5" in (second.diff or "") and "+    return 3" in (second.diff or "")
    assert data.heatmap.speedup[0] == [2.0] and data.heatmap.holds == [[False], [True]]
    # every metric is shown: the built-in ones measured outside the command, per winner
    assert first.metrics["wall_seconds"] > 0 and first.metrics["peak_rss_mb"] > 0
    assert '<th class="metric">wall_seconds</th>' in report_html.render(data)
    kinds = {b.kind for b in data.failures}
    assert {"outside_editable", "crash"} <= kinds


def test_category_of_any_status() -> None:
    assert report_data.category("failed", "build_error") == "failed: build_error"
    assert report_data.category("failed", None) == "failed"
    assert report_data.category("interrupted") == "interrupted"
    assert report_data.category(None) == report_data.category(3) == "unknown"


def test_no_results_and_unwritable_folder_are_one_line_errors(exp_repo, tmp_path) -> None:
    fib = exp_repo("fib")
    out = CliRunner().invoke(main, ["report", str(fib)])
    assert out.exit_code == 2 and "no results yet" in out.output
    assert not (fib / "report.html").exists()


def test_unwritable_out_is_one_line(generic, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = CliRunner().invoke(main, ["report", str(generic), "--out", str(blocker / "sub")])
    assert out.exit_code == 2 and "cannot write the report" in out.output
    assert "Traceback" not in out.output


def test_a_run_with_only_its_seed_still_reports_every_panel(exp_repo, tmp_path) -> None:
    """Killed right after the seed: no attempt, winner or failure; the page and image are
    still whole (empty panels say so)."""
    from ratchetloop import scores as scores_mod

    fib = exp_repo("fib")
    scores_mod.save(fib, scores_mod.Scores(
        experiment="fib", unit="us", direction="lower_is_better",
        seed=scores_mod.Row(timestamp="2026-01-01 00:00:00", model="seed", kind="seed",
                            score=2600.0, case_scores={"n20": 2600.0}, commit="seed",
                            note="naive seed")))
    out = CliRunner().invoke(main, ["report", str(fib), "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("Plotly.newPlot(") == len(PANELS)
    assert "no winners yet" in page and "no failures recorded" in page
    assert 'class="no-winners"' in page
    assert image_rgb(tmp_path / "r" / "report.png").shape[:2] == (900, 1440)


def test_generic_attempts_come_from_results_tsv_when_runs_are_gone(generic) -> None:
    copy = generic.parent / "copy"
    shutil.copytree(generic, copy, ignore=shutil.ignore_patterns("runs", "report.*"))
    data = report_data.gather(experiment_mod.load(copy))
    rows = (generic / "results.tsv").read_text().splitlines()[1:]
    assert len(data.attempts) == len(rows) >= 6
    assert data.attempts[0].category == "accepted (best)" and data.attempts[0].score == 5
    assert {"rejected", "failed"} <= {a.category for a in data.attempts}
    assert len(data.winners) == 2 and data.winners[1].diff  # winners/ still has the sources


def test_a_rollback_changes_what_later_winners_are_diffed_against() -> None:
    from ratchetloop import scores as scores_mod

    def row(commit: str, t: str, score: float, iteration: int) -> scores_mod.Row:
        return scores_mod.Row(timestamp=t, model="m", kind="best", score=score, commit=commit,
                              note=commit, iteration=iteration)

    sc = scores_mod.Scores(
        experiment="x", unit="us", direction="lower_is_better",
        seed=row("seed", "2026-01-01 00:00:00", 100, 0).model_copy(update={"kind": "seed"}),
        rows=[row("a", "2026-01-01 00:00:01", 50, 1), row("b", "2026-01-01 00:00:02", 40, 2),
              row("c", "2026-01-01 00:00:09", 45, 5)],
        rollbacks=[scores_mod.Rollback(timestamp="2026-01-01 00:00:05", to="a", previous="b")])
    events = report_data._events(sc)
    assert [getattr(e, "commit", None) or f"rollback:{e.to}" for e in events] == [
        "a", "b", "rollback:a", "c"]
    path = report_data._best_path(sc, [])
    assert [(p.score, p.commit) for p in path] == [
        (100, "seed"), (50, "a"), (40, "b"), (50, "a (rollback)"), (45, "c")]
