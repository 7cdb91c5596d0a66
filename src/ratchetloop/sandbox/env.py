"""The child's environment: a short allow-list, and never anything that looks like a secret.

Whatever the allow-list or the caller say, no variable named like a secret, and no variable
whose value contains one of our secrets' values, reaches the child.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import tempfile
from collections.abc import Mapping

ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
SECRET_PATTERNS = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*",
                   "*AUTH*")
RESULT_FD_VAR = "RATCHET_RESULT_FD"


def looks_secret(name: str) -> bool:
    """Names like OPENAI_API_KEY, hf_token, PGPASSWORD: dropped whoever asks for them."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pat) for pat in SECRET_PATTERNS)


def _secret_values() -> set[str]:
    """Values of our own secret-named variables (a caller may copy one under a new name)."""
    return {v for k, v in os.environ.items() if looks_secret(k) and len(v) >= 8}


def child_env(extra: Mapping[str, str] | None) -> tuple[dict[str, str], list[str]]:
    """(the child's whole environment, names dropped because they looked secret)."""
    env = {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = env.get("TMPDIR", tempfile.gettempdir())
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        env.update(extra)
    env.pop(RESULT_FD_VAR, None)  # only run(result_channel=True) hands out a result fd
    bad_values = _secret_values()
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for k, v in env.items():
        if looks_secret(k) or any(s in v for s in bad_values):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def homes() -> list[str]:
    """Home dirs to hide: $HOME and the account's home from passwd (they may differ)."""
    found = [os.path.expanduser("~")]
    try:
        found.append(pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:
        pass
    return sorted({os.path.realpath(h) for h in found if h and os.path.isabs(h)} - {"/"})


def keys_files() -> list[str]:
    """Where our keys file may be (RATCHET_KEYS_FILE, ~/.config/ratchetloop/keys.json for
    each home): the init covers each one still visible with an empty read-only file."""
    paths = [os.path.join(h, ".config", "ratchetloop", "keys.json") for h in homes()]
    override = os.environ.get("RATCHET_KEYS_FILE")
    if override:
        paths.append(os.path.expanduser(override))
    return sorted({os.path.realpath(p) for p in paths})
