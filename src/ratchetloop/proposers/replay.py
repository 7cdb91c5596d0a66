"""Scripted replies for tests and demos. It is not a model and never claims to be one."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..errors import RatchetError
from .base import BaseProposer, Feedback, Proposal, Usage


class ScriptExhausted(RatchetError):
    """The script has no reply left: the run ends normally, with this as its stop reason."""

    stop_quietly = True


class ReplayProposer(BaseProposer):
    """Answers each prompt with the next scripted reply; when it runs out, the run stops
    with its summary."""

    answers_follow_ups = True  # the next scripted reply answers whatever is asked

    def __init__(self, replies: Iterable[str | dict], name: str = "replay") -> None:
        self.replies = list(replies)
        self.name = name
        self.prompts: list[str] = []
        self.feedback: list[Feedback] = []

    @classmethod
    def from_file(cls, path: Path) -> ReplayProposer:
        """A JSON list of replies (strings, or {"text", "usage"} objects)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RatchetError(f"cannot read replay script {path}: {exc}") from None
        if not isinstance(data, list):
            raise RatchetError(f"replay script {path} must be a JSON list of replies")
        return cls(data, name=f"replay:{Path(path).name}")

    def propose(self, prompt: str) -> Proposal:
        self.prompts.append(prompt)
        if not self.replies:
            raise ScriptExhausted("replay script exhausted: no more scripted replies")
        reply = self.replies[0]
        usage = Usage(**reply.get("usage", {})) if isinstance(reply, dict) else Usage()
        if self.budget is not None and self.budget.limited:
            self.budget.check(usage, self.name)  # the scripted usage is the exact estimate
        self.replies.pop(0)
        text = reply["text"] if isinstance(reply, dict) else reply
        return Proposal(text=text, usage=usage, model=self.name)

    def observe(self, proposal: Proposal, feedback: Feedback) -> None:
        self.feedback.append(feedback)
