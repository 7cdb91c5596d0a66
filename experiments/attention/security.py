"""Reject attention candidates that could escape the benchmark before anything compiles.

The candidate is hostile until proven otherwise: the sandbox limits what a run can do, and
these rules keep out what no attention kernel needs (system headers beyond maths and
intrinsics, process/file/network/dynamic-loading calls, inline assembly, code that runs
before main, symbol or pragma tricks that reach the harness) and state that survives
between calls (a cache of the last inputs would pass any single-call check). The rules are
deliberately textual and conservative; each message says what to do instead.
"""

from __future__ import annotations

import re

ALLOWED_HEADERS = {
    "math.h", "stdlib.h", "string.h", "stddef.h", "stdint.h", "stdbool.h", "float.h",
    "limits.h", "immintrin.h",
}
ALLOWED_PRAGMAS = (  # only lines that steer code generation, with plain option strings
    re.compile(r'GCC\s+(optimize|target)\s*\(\s*"[\w,.=\-\s]+"(\s*,\s*"[\w,.=\-\s]+")*\s*\)'),
    re.compile(r"GCC\s+unroll\s+\d+"),
    re.compile(r"GCC\s+ivdep"),
)
ALLOWED_DIRECTIVES = {"include", "define", "undef", "if", "ifdef", "ifndef", "elif", "else",
                      "endif", "pragma"}
FORBIDDEN_CALLS = {
    # processes, signals, exits
    "system", "popen", "pclose", "fork", "vfork", "clone", "execl", "execlp", "execle",
    "execv", "execvp", "execvpe", "execve", "fexecve", "posix_spawn", "posix_spawnp", "kill",
    "raise", "signal", "sigaction", "abort", "exit", "_exit", "_Exit", "atexit",
    "at_quick_exit", "quick_exit", "setjmp", "longjmp", "ptrace", "syscall", "prctl", "wait",
    "waitpid", "getpid", "setrlimit", "sysconf", "main",
    # files, streams, environment
    "open", "openat", "creat", "close", "read", "write", "pread", "pwrite", "fopen",
    "freopen", "fdopen", "fclose", "fread", "fwrite", "printf", "fprintf", "puts", "fputs",
    "putchar", "perror", "remove", "rename", "unlink", "getenv", "setenv", "putenv",
    "chdir", "ioctl", "fcntl", "dup", "dup2", "pipe", "stdin", "stdout", "stderr", "FILE",
    "chmod", "mkdir", "rmdir", "unsetenv", "environ",
    # memory mapping, dynamic loading, threads
    "mmap", "munmap", "mprotect", "brk", "sbrk", "dlopen", "dlsym", "dlclose",
    "pthread_create", "thrd_create", "pthread_t", "thrd_t",
    # network
    "socket", "connect", "bind", "listen", "accept", "send", "recv", "sendto", "recvfrom",
    "getaddrinfo", "gethostbyname",
}
ALLOWED_BUILTINS = {
    "__builtin_expect", "__builtin_prefetch", "__builtin_assume_aligned", "__builtin_memcpy",
    "__builtin_memset", "__builtin_fmaf", "__builtin_fma", "__builtin_expf", "__builtin_exp",
    "__builtin_sqrtf", "__builtin_fabsf", "__builtin_inff", "__builtin_huge_valf",
    "__builtin_isfinite", "__builtin_isinf", "__builtin_isnan", "__builtin_unreachable",
}
FORBIDDEN_ATTRIBUTES = {"constructor", "destructor", "section", "ifunc", "alias", "weak",
                        "weakref", "visibility", "used", "externally_visible", "naked"}
IDENT = re.compile(r"[A-Za-z_]\w*")
STATIC = re.compile(r"\bstatic\b([^;={]*)([;={]?)")
CONST_DECL = re.compile(r"\s+const\s+[A-Za-z_][\w\s]*?\s[A-Za-z_]\w*\s*(\[[^\]]*\]\s*)*$")


def _constant_table(declarator: str, follows: str) -> bool:
    """`static const float t[] = {...}` (initialised, no pointer) is the one static allowed."""
    return follows == "=" and CONST_DECL.fullmatch(declarator) is not None


def _splice(source: str) -> str:
    """Join backslash-newline continuations first, as the compiler does."""
    return re.sub(r"\\\r?\n", "", source)


def _strip(source: str) -> str:
    """Blank comments and string/char literals (kept as empty quotes)."""
    pattern = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
                         re.DOTALL)

    def blank(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.startswith(("//", "/*")):
            return re.sub(r"[^\n]", " ", tok)
        return tok[0] + tok[-1]

    return pattern.sub(blank, source)


def _top_level(code: str) -> str:
    """The code outside every brace pair (the function body and initialisers removed)."""
    out, depth = [], 0
    for ch in code:
        if ch == "{":
            depth += 1
            out.append("{")
        elif ch == "}":
            depth = max(0, depth - 1)
            out.append("}")
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def check(source: str) -> list[str]:
    """Reasons to reject `source` (empty list = allowed to compile)."""
    reasons: list[str] = []
    spliced = _splice(source)
    raw_includes = re.findall(r"^\s*#\s*include\s*(.*)$", _strip_keep_includes(spliced),
                              re.MULTILINE)
    code = _strip(spliced)

    if re.search(r"\?\?[=/'()!<>\-]", code) or "%:" in code:
        reasons.append("trigraphs and the %: digraph are not allowed; write # directly")
    if re.search(r"\\[uU][0-9A-Fa-f]", code):
        reasons.append("universal character names outside strings are not allowed")

    for line in _strip_keep_includes(spliced).splitlines():  # pragma strings matter
        m = re.match(r"\s*#\s*(\w*)(.*)$", line)
        if not m:
            continue
        directive, rest = m.group(1), m.group(2).strip()
        if directive not in ALLOWED_DIRECTIVES:
            reasons.append(f"preprocessor directive #{directive} is not allowed")
        elif directive == "pragma" and not any(p.fullmatch(rest) for p in ALLOWED_PRAGMAS):
            reasons.append(f"#pragma {' '.join(rest.split()[:2])} is not allowed "
                           "(only GCC optimize/target/unroll/ivdep)")
        elif directive == "define" and "##" in rest:
            reasons.append("token pasting (##) in macros is not allowed")
    for inc in raw_includes:
        m = re.match(r"<([\w./]+)>", inc.strip())
        if not m or m.group(1) not in ALLOWED_HEADERS:
            reasons.append(f"#include {inc.strip()} is not allowed; allowed headers: "
                           + ", ".join(sorted(ALLOWED_HEADERS)))

    names = set(IDENT.findall(code))
    for name in sorted(names & FORBIDDEN_CALLS):
        reasons.append(f"`{name}` is not allowed: the kernel must not do I/O, touch "
                       "processes, files, memory mappings, threads or the network")
    for name in sorted(n for n in names if n.startswith("__builtin_")
                       and n not in ALLOWED_BUILTINS and not n.startswith("__builtin_ia32_")):
        reasons.append(f"`{name}` is not allowed")
    if names & {"asm", "__asm__", "__asm"}:
        reasons.append("inline assembly is not allowed; use intrinsics from immintrin.h")
    if "_Pragma" in names:
        reasons.append("_Pragma is not allowed; use a #pragma GCC line")
    if names & {"_Thread_local", "__thread", "thread_local"}:
        reasons.append("thread-local state is not allowed")
    for m in re.finditer(r"__attribute__\s*\(\((.*?)\)\)", code, re.DOTALL):
        bad = set(IDENT.findall(m.group(1))) & FORBIDDEN_ATTRIBUTES
        for attr in sorted(bad):
            reasons.append(f"__attribute__(({attr})) is not allowed")
    if any(not _constant_table(m.group(1), m.group(2)) for m in STATIC.finditer(code)):
        reasons.append("`static` variables are not allowed: no state may survive between "
                       "calls (use `static const` for constant tables, locals or malloc "
                       "for scratch)")
    top = re.sub(r"^\s*#.*$", "", _top_level(code), flags=re.MULTILINE)
    for stmt in top.split(";"):
        stmt = stmt.strip()
        if stmt and not stmt.startswith("typedef") and "{}" not in stmt.replace(" ", ""):
            reasons.append("file-scope declarations are not allowed (only includes, pragmas, "
                           f"macros, typedefs and the one function): `{stmt[:60]}`")
            break
    return list(dict.fromkeys(reasons))


def _strip_keep_includes(source: str) -> str:
    """Comments blanked but string literals kept, so `#include "x.h"` stays visible."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), source,
                  flags=re.DOTALL)
