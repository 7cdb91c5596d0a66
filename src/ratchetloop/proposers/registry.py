"""Map a --model string to a proposer.

tuner                                 offline knob search (the default; not a model)
replay:<file.json>                    scripted replies (tests, demos)
gpt-… o1… o3… o4… chatgpt-…           OpenAI (OPENAI_API_KEY; OPENAI_BASE_URL)
openai:<model>                        OpenAI, for names the patterns above miss
claude-… | anthropic:<model>          Anthropic (ANTHROPIC_API_KEY; ANTHROPIC_BASE_URL)
ollama:<model>                        Ollama at OLLAMA_HOST (default localhost:11434)
openai-compatible:<model>@<base_url>  vLLM, llama.cpp, LM Studio… (key optional:
                                      OPENAI_COMPATIBLE_API_KEY)
claude-cli[:<model>]  codex-cli[:<model>]   the command-line agents
<model>,<model>,...                   a bandit over several of the above (bandit.py)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProposerError, RatchetError
from . import keys

if TYPE_CHECKING:  # annotations only: `ratchet models` imports this module for ollama_base_url
    from ..experiment import Experiment
    from .base import Proposer

DEFAULT_MODEL = "tuner"
OLLAMA_DEFAULT = "http://localhost:11434"
_OPENAI = re.compile(r"^(gpt-|chatgpt-|o\d)", re.IGNORECASE)
_COMPATIBLE = re.compile(r"^openai-compatible:(?P<model>.+?)@(?P<url>https?://\S+)$")


def ollama_base_url() -> str:
    """OLLAMA_HOST (`host:port` or a URL) or the default, with the OpenAI-compatible /v1."""
    host = os.environ.get("OLLAMA_HOST", "").strip() or OLLAMA_DEFAULT
    if not host.startswith(("http://", "https://")):
        host = "http://" + host
    host = host.rstrip("/")
    return host if host.endswith("/v1") else host + "/v1"


def require_key(var: str, backend: str) -> str:
    key = keys.get_key(var)
    if not key:
        raise ProposerError(
            f"{backend} needs {var}: export it, or put it in {keys.keys_file_path()} (mode 0600)"
        )
    return key


def _stable_text(experiment: Experiment) -> str | None:
    """EXPERIMENT.md, the part of every prompt worth caching (see anthropic.py)."""
    try:
        return experiment.path("EXPERIMENT.md").read_text(encoding="utf-8")
    except OSError:
        return None


def resolve(
    model: str | None,
    experiment: Experiment,
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
) -> Proposer:
    """The proposer a --model string names; RatchetError with a hint when none does.
    Several names, comma-separated, make a bandit that picks one per request (bandit.py)."""
    model = (model or DEFAULT_MODEL).strip()
    if "," in model:
        from .bandit import BanditProposer

        names = [part.strip() for part in model.split(",")]
        if not all(names):
            raise RatchetError(f"--model {model!r}: an empty name between commas")
        return BanditProposer([resolve(name, experiment, temperature=temperature,
                                       max_tokens=max_tokens) for name in names])
    prices = experiment.prices
    if model == "tuner":
        from .tuner import TunerProposer

        return TunerProposer(experiment)
    if model.startswith("replay:"):
        from .replay import ReplayProposer

        return ReplayProposer.from_file(Path(model.split(":", 1)[1]))

    if model.startswith("ollama:"):
        from .openai import OpenAIProposer

        name = model.split(":", 1)[1]
        if not name:
            raise RatchetError("ollama needs a model name, e.g. `ollama:qwen2.5-coder`")
        return OpenAIProposer(
            name,
            name=model,
            api_key="ollama",
            base_url=ollama_base_url(),
            api="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            prices=prices,
            local=True,
            key_var=None,
        )
    if model.startswith("openai-compatible:"):
        from .openai import OpenAIProposer

        match = _COMPATIBLE.match(model)
        if not match:
            raise RatchetError(
                "expected `openai-compatible:<model>@<base_url>`,"
                " e.g. `openai-compatible:qwen@http://localhost:8000/v1`"
            )
        return OpenAIProposer(
            match["model"],
            name=f"openai-compatible:{match['model']}",
            api_key=keys.get_key(keys.OPENAI_COMPATIBLE),
            base_url=match["url"],
            api="chat",
            temperature=temperature,
            max_tokens=max_tokens,
            prices=prices,
            local=True,
            key_var=keys.OPENAI_COMPATIBLE,
        )
    if model == "claude-cli" or model.startswith("claude-cli:"):
        from .agents import ClaudeCLIProposer

        return ClaudeCLIProposer(model.partition(":")[2] or None, prices=prices)
    if model == "codex-cli" or model.startswith("codex-cli:"):
        from .agents import CodexCLIProposer

        return CodexCLIProposer(model.partition(":")[2] or None, prices=prices)

    if model.startswith("openai:") or _OPENAI.match(model):
        from .openai import OpenAIProposer

        name = model.removeprefix("openai:")
        return OpenAIProposer(
            name,
            api_key=require_key(keys.OPENAI, "OpenAI"),
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            temperature=temperature,
            max_tokens=max_tokens,
            prices=prices,
        )
    if model.startswith("anthropic:") or model.startswith("claude-"):
        from .anthropic import AnthropicProposer

        name = model.removeprefix("anthropic:")
        return AnthropicProposer(
            name,
            api_key=require_key(keys.ANTHROPIC, "Anthropic"),
            base_url=os.environ.get("ANTHROPIC_BASE_URL") or None,
            temperature=temperature,
            max_tokens=max_tokens,
            prices=prices,
            stable_text=_stable_text(experiment),
        )
    raise RatchetError(
        f"unknown model {model!r}: try `tuner`, `gpt-4.1-mini`, `claude-sonnet-4-5`,"
        " `ollama:<model>`, `openai-compatible:<model>@<url>`, `claude-cli`, `codex-cli`"
        " (see `ratchet models`)"
    )
