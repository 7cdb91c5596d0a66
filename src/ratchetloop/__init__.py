"""ratchetloop: the model proposes, the evaluator decides, memory keeps the judgment."""

__version__ = "0.1.0"
