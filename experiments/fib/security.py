"""Reject what a Fibonacci function never needs, before it runs."""

import ast

BANNED_MODULES = {"os", "sys", "subprocess", "socket", "shutil", "pathlib", "ctypes",
                  "importlib", "multiprocessing", "threading", "signal", "builtins", "io"}
BANNED_CALLS = {"open", "exec", "eval", "compile", "__import__", "input", "globals", "vars"}


def check(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"syntax error: {exc.msg} (line {exc.lineno})"]
    reasons = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            for name in names:
                if name.split(".")[0] in BANNED_MODULES:
                    reasons.append(f"imports {name}: no system access is needed")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in BANNED_CALLS:
                reasons.append(f"calls {node.func.id}(): not allowed in a candidate")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__") and node.attr not in (
                "__name__",):
            reasons.append(f"touches dunder attribute {node.attr}")
    return sorted(set(reasons))
