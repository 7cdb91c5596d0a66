"""User-facing errors: one clear line, never a traceback."""


class RatchetError(Exception):
    """A problem the user can fix; the CLI prints `message` alone and exits 2."""


class ProposerError(RatchetError):
    """The model backend failed in a way that should stop the run (bad key, unknown model)."""
