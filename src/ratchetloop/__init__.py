"""ratchetloop: the model proposes, the evaluator decides, memory keeps the judgment."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """`from ratchetloop import Loop` without importing the loop for every submodule."""
    if name in ("Loop", "LoopResult", "explore", "Explored", "run_experiment"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
