"""What a model may send back in generic mode, and how it becomes a set of files.

A candidate is the full content of every editable file, serialised as one "bundle" text
(so the core loop can fingerprint, archive and restore it like any other source). Replies
carry whole-file rewrites (a fenced block named by a `File: path` line or its info
string) or SEARCH/REPLACE edit blocks, each after a line naming the file's path.

A bundle is only ever turned back into files through `files_of`, which refuses any path
that is not editable: a file whose text contained a bundle header line could otherwise
smuggle in a second "file" (`../../hooks/post-commit`) that the loop would write on the
host. apply_reply refuses such text up front (failure kind `integrity`).
"""

from __future__ import annotations

import re

from ..extract import IDEA, NOTE, Extracted, ExtractionError, _one_line, _strip_blocks

HEADER = "### ratchet-file: "
EDITED = "\x00edit-block\x00\n"
SEARCH, DIVIDER, REPLACE = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"
EDIT_BLOCK = re.compile(
    r"^<{7} SEARCH[ \t]*\n(.*?)^={7}[ \t]*\n(.*?)^>{7} REPLACE[ \t]*$", re.MULTILINE | re.DOTALL)
FENCE_BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PATH_LINE = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?(?:file(?:name)?:\s*)?`?([\w./-]+)`?"
                       r"(?:\*\*)?:?\s*$", re.IGNORECASE)


def to_bundle(files: dict[str, str]) -> str:
    return "".join(f"{HEADER}{path}\n{files[path]}" + ("" if files[path].endswith("\n") else "\n")
                   for path in sorted(files))


def from_bundle(text: str) -> dict[str, str]:
    files: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith(HEADER):
            current = line[len(HEADER):].strip()
            files[current] = ""
        elif current is not None:
            files[current] += line
    return files


def files_of(bundle: str, editable: list[str]) -> dict[str, str]:
    """from_bundle, refusing any path that is not editable (ExtractionError `integrity`)."""
    files = from_bundle(bundle)
    foreign = sorted(p for p in files if p not in editable)
    if foreign:
        raise ExtractionError("integrity", f"bundle names non-editable path(s):"
                              f" {', '.join(foreign)[:200]}")
    return files


def code_lines(files: dict[str, str]) -> int:
    """Non-blank lines: what the size rule counts."""
    return sum(1 for text in files.values() for line in text.splitlines() if line.strip())


def apply_reply(text: str, base: dict[str, str], editable: list[str],
                language: str = "text") -> Extracted:
    """New bundle from a reply; ExtractionError (a recorded failure) for anything unusable."""
    files = dict(base)
    touched: set[str] = set()
    for path, search, replace in _edit_blocks(text, editable):
        path = _resolve(path, editable)
        _check_editable(path, editable)
        if search not in files[path]:
            raise ExtractionError("search_not_found",
                                  f"SEARCH text not found in {path}: {_one_line(search, 80)!r}")
        files[path] = files[path].replace(search, replace, 1)
        touched.add(path)
    without_edits = EDIT_BLOCK.sub(EDITED, text)  # fences that held edits are not files
    for path, body in _whole_files(without_edits, editable):
        path = _resolve(path, editable)
        _check_editable(path, editable)
        files[path] = body
        touched.add(path)
    if not touched:
        raise ExtractionError("no_code", "reply has no whole-file block and no SEARCH/REPLACE edit")
    if files == base:
        raise ExtractionError("no_change", "the edits leave every file as it was")
    for path in sorted(touched):
        if any(line.startswith(HEADER) for line in files[path].splitlines()):
            raise ExtractionError("integrity", f"{path} contains a line starting with"
                                  f" {HEADER.strip()!r}, the loop's own file separator")
    outside = FENCE_BLOCK.sub("", _strip_blocks(without_edits)).replace(EDITED, "")
    note = NOTE.search(outside)
    ideas = [m.group(1).strip() for m in IDEA.finditer(outside)][:3]
    return Extracted(source=to_bundle(files), ideas=ideas, language=language,
                     note=_one_line(note.group(1)) if note else "no note given")


def _resolve(path: str, editable: list[str]) -> str:
    """An editable path as given, or by its path inside the experiment folder: the one
    editable file that ends with it (an experiment-relative contract names `model.py`,
    the loop `experiments/train/model.py`)."""
    if path in editable:
        return path
    matches = [p for p in editable if p.endswith("/" + path.removeprefix("./"))]
    return matches[0] if len(matches) == 1 else path


def _check_editable(path: str, editable: list[str]) -> None:
    if path not in editable:
        raise ExtractionError("outside_editable",
                              f"edits {path}, which is not editable (editable: "
                              f"{', '.join(editable)})")


def _path_before(text: str, pos: int, editable: list[str]) -> str | None:
    for line in reversed(text[:pos].splitlines()[-3:]):
        if not line.strip() or line.strip().startswith("```"):
            continue
        match = PATH_LINE.match(line)
        if match and ("." in match.group(1) or "/" in match.group(1)
                      or match.group(1) in editable):
            return match.group(1)
        return None
    return None


def _edit_blocks(text: str, editable: list[str]) -> list[tuple[str, str, str]]:
    blocks = []
    for m in EDIT_BLOCK.finditer(text):
        path = _path_before(text, m.start(), editable)
        if path is None:
            raise ExtractionError("no_path", "a SEARCH/REPLACE block is not preceded by its path")
        blocks.append((path, m.group(1), m.group(2)))
    return blocks


def _whole_files(text: str, editable: list[str]) -> list[tuple[str, str]]:
    found = []
    blocks = [m for m in FENCE_BLOCK.finditer(text) if EDITED not in m.group(2)]
    for m in blocks:
        info = m.group(1).split()
        named = [w for w in info if "." in w or "/" in w or w in editable]
        path = named[-1] if named else _path_before(text, m.start(), editable)
        if path is None and len(editable) == 1 and len(blocks) == 1:
            path = editable[0]
        if path is None:
            raise ExtractionError("no_path", "a code block does not say which file it replaces"
                                  " (put `File: <path>` on the line before it)")
        found.append((path, m.group(2)))
    return found
