"""JSON objects in a model's reply: the explorer's contract, a review verdict, a strategy.

Models wrap JSON in fences and prose, show a small example before the answer, or add a
sentence after it, so no reply is parsed whole: every object is decoded where it starts.
"""

from __future__ import annotations

import json
import re
from typing import Any


def objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in `text` (nested ones too), in the order they start."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def largest(text: str) -> dict[str, Any] | None:
    """The answer among the objects: the largest in a fenced block when there is one (a
    model fences its answer, not its asides), else the largest (an example or a nested
    part is smaller)."""
    fenced = [d for block in re.findall(r"```[A-Za-z]*\s*\n(.*?)```", text, re.DOTALL)
              for d in objects(block)]
    return max(fenced or objects(text), key=lambda d: len(json.dumps(d)), default=None)
