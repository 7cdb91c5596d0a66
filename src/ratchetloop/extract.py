"""Pull exactly one target function (and a one-line note) out of a model's reply.

Anything else — no code, a truncated block, two functions, the wrong name — is an
`ExtractionError` with a kind the memory can group on, never a crash.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass

FENCE = re.compile(r"^```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
NOTE = re.compile(r"^\s*(?:\*\*)?note(?:\*\*)?\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
IDEA = re.compile(r"^\s*(?:\*\*)?(?:idea|next)(?:\*\*)?\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


class ExtractionError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Extracted:
    source: str
    note: str
    ideas: list[str]

    language: str = "c"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.source, self.language)


def code_blocks(text: str) -> tuple[list[str], bool]:
    """Fenced blocks in order, and whether the last fence was left open (truncated reply)."""
    blocks: list[str] = []
    fences = list(FENCE.finditer(text))
    i = 0
    while i < len(fences):
        opening = fences[i]
        if i + 1 >= len(fences):
            return blocks, True
        closing = fences[i + 1]
        blocks.append(text[opening.end() + 1 : closing.start()])
        i += 2
    return blocks, False


def extract(text: str, function: str, language: str = "c") -> Extracted:
    blocks, truncated = code_blocks(text)
    finder = python_functions if language == "python" else c_functions
    with_target = [b for b in blocks if function in finder(b)]
    if not blocks:
        if truncated:
            raise ExtractionError("truncated", "reply ends inside an unclosed code block")
        raise ExtractionError("no_code", "reply contains no fenced code block")
    if not with_target:
        if truncated:
            raise ExtractionError("truncated", "reply ends inside an unclosed code block")
        found = sorted({name for b in blocks for name in finder(b)})
        if found:
            raise ExtractionError(
                "wrong_function",
                f"expected a function named {function}, found {', '.join(found)}",
            )
        raise ExtractionError("no_function", f"no definition of {function} in the code block")
    source = with_target[-1].strip("\n") + "\n"
    names = finder(source)
    if len(names) > 1:
        others = ", ".join(n for n in names if n != function)
        raise ExtractionError(
            "multiple_functions", f"exactly one function allowed; also defines {others}"
        )
    outside = FENCE.sub("", _strip_blocks(text))
    note_match = NOTE.search(outside)
    note = note_match.group(1).strip() if note_match else ""
    ideas = [m.group(1).strip() for m in IDEA.finditer(outside)]
    return Extracted(
        source=source, note=_one_line(note) or "no note given", ideas=ideas[:3], language=language
    )


def _strip_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def strip_c_comments_and_strings(source: str) -> str:
    """Blank out comments, string and char literals so braces inside them don't count."""
    pattern = re.compile(
        r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.DOTALL
    )

    def blank(m: re.Match[str]) -> str:
        token = m.group(0)
        if token.startswith(("//", "/*")):
            return " " * len(token) if "\n" not in token else re.sub(r"[^\n]", " ", token)
        return token[0] + " " * (len(token) - 2) + token[-1]

    return pattern.sub(blank, source)


def c_functions(source: str) -> list[str]:
    """Names of top-level C function definitions (a `(...)` then `{` at brace depth 0)."""
    code = strip_c_comments_and_strings(source)
    code = re.sub(r"^\s*#.*$", "", code, flags=re.MULTILINE)
    names: list[str] = []
    depth = 0
    last_call_name: str | None = None
    i = 0
    while i < len(code):
        ch = code[i]
        if ch == "{":
            if depth == 0 and last_call_name:
                names.append(last_call_name)
            depth += 1
            last_call_name = None
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0:
            last_call_name = None
        elif ch == "(" and depth == 0:
            m = re.search(r"([A-Za-z_]\w*)\s*$", code[:i])
            close = _matching_paren(code, i)
            after = code[close + 1 :] if close > 0 else ""
            if m and m.group(1) not in {"__attribute__", "if", "for", "while", "switch"}:
                if re.match(r"\s*(?:__attribute__\s*\(\(.*?\)\)\s*)*\{", after, re.DOTALL):
                    last_call_name = m.group(1)
            if close > 0:
                i = close
        i += 1
    return names


def _matching_paren(code: str, start: int) -> int:
    depth = 0
    for j in range(start, len(code)):
        if code[j] == "(":
            depth += 1
        elif code[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    return -1


def python_functions(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def fingerprint(source: str, language: str = "c") -> str:
    """Hash of the code without comments or formatting: reformatting is not novelty."""
    if language == "python":
        try:
            compact = ast.dump(ast.parse(source))
        except SyntaxError:
            compact = re.sub(r"\s+", "", source)
    else:
        compact = re.sub(r"\s+", "", strip_c_comments_and_strings(source))
    return hashlib.sha256(compact.encode("utf-8")).hexdigest()[:16]
