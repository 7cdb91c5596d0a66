"""Map a --model string to a proposer. Real model backends register their prefixes here."""

from __future__ import annotations

from pathlib import Path

from ..errors import RatchetError
from ..experiment import Experiment
from .base import Proposer

DEFAULT_MODEL = "tuner"


def resolve(
    model: str | None,
    experiment: Experiment,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> Proposer:
    """`tuner` (the embedded default), `replay:<file.json>`; real backends added by name."""
    model = model or DEFAULT_MODEL
    if model == "tuner":
        from .tuner import TunerProposer

        return TunerProposer(experiment)
    if model.startswith("replay:"):
        from .replay import ReplayProposer

        return ReplayProposer.from_file(Path(model.split(":", 1)[1]))
    raise RatchetError(f"unknown model {model!r}: try `tuner`, or see `ratchet models`")
