"""`ratchet report`: the morning view of a run, as a self-contained page and an image.

data.py reads the records into a ReportData; html.py (plotly, inlined) and png.py
(matplotlib) draw it. Imported only by the `report` command: plotly and matplotlib are
heavy, and no other command pays for them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RatchetError
from ..experiment import Experiment
from ..files import atomic_write_bytes, atomic_write_text

__all__ = ["write_report"]


def write_report(exp: Experiment, out: Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.png into `out` (default: the experiment folder, next to
    SCORES.md; ignored by git and never packaged), each atomically."""
    from . import data, html, png

    folder = Path(out) if out is not None else exp.root
    report = data.gather(exp)
    page, image = html.render(report), png.render(report)
    html_path, png_path = folder / "report.html", folder / "report.png"
    try:
        atomic_write_text(html_path, page, durable=False)
        atomic_write_bytes(png_path, image, durable=False)
    except OSError as exc:
        raise RatchetError(f"cannot write the report into {folder}: {exc.strerror or exc}"
                           ) from None
    return html_path, png_path
