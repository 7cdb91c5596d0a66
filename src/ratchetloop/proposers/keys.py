"""API keys: from the environment first, else from a private keys file.

The keys file (RATCHET_KEYS_FILE, default ~/.config/ratchetloop/keys.json) is a JSON
object of environment-variable names to keys, e.g. {"OPENAI_API_KEY": "sk-..."}. It must
be readable by its owner only (mode 0600); anything looser is refused with a message
naming the file and the fix. Key values never appear in messages raised from here.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import RatchetError

OPENAI = "OPENAI_API_KEY"
ANTHROPIC = "ANTHROPIC_API_KEY"
# Keys for self-hosted OpenAI-compatible servers are kept apart from OPENAI_API_KEY so
# a real OpenAI key is never sent to an arbitrary base URL.
OPENAI_COMPATIBLE = "OPENAI_COMPATIBLE_API_KEY"


def keys_file_path() -> Path:
    override = os.environ.get("RATCHET_KEYS_FILE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".config" / "ratchetloop" / "keys.json"


def load_keys_file(path: Path | None = None) -> dict[str, str]:
    """The keys file's entries, {} when absent; RatchetError when unsafe or unreadable."""
    path = path or keys_file_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise RatchetError(f"cannot read keys file {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise RatchetError(
            f"keys file {path} is accessible by others (mode {mode:04o}); run `chmod 600 {path}`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RatchetError(f"cannot read keys file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:  # the message carries a position, never content
        raise RatchetError(f"keys file {path} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise RatchetError(
            f'keys file {path} must be a JSON object like {{"OPENAI_API_KEY": "..."}}'
        )
    return data


def get_key(var: str) -> str | None:
    """The key for `var` from the environment, else the keys file, else None."""
    value = os.environ.get(var)
    if value:
        return value
    return load_keys_file().get(var) or None


def key_source(var: str) -> str:
    """Where `var` would come from: "env", "keys file", or "missing" (never the value)."""
    if os.environ.get(var):
        return "env"
    try:
        if load_keys_file().get(var):
            return "keys file"
    except RatchetError:
        return "missing"
    return "missing"
