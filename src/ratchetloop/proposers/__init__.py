"""Proposers: where candidates come from. `registry.resolve()` maps a --model string to one."""

from .base import BaseProposer, Feedback, Proposal, Proposer, Usage

__all__ = ["BaseProposer", "Feedback", "Proposal", "Proposer", "Usage"]
