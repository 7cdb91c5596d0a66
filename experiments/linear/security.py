"""Reject candidates that break the linear contract before anything compiles.

A first filter, not the wall (the sandbox is): it keeps the obvious out (process, file,
network and dynamic-loading calls, inline asm, constructors, threads, printing into the
harness protocol) and the usual tricks to smuggle them in (token pasting, trigraphs and
digraphs, line splices, computed includes, _Pragma). Each violated rule yields one reason.
"""

from __future__ import annotations

import re

ALLOWED_HEADERS = {
    "stddef.h", "stdint.h", "stdbool.h", "string.h", "math.h", "float.h", "limits.h",
    "stdlib.h", "immintrin.h", "xmmintrin.h", "emmintrin.h", "pmmintrin.h", "tmmintrin.h",
    "smmintrin.h", "nmmintrin.h",
}
# #pragma lines that only steer code generation
ALLOWED_PRAGMAS = (
    re.compile(r"GCC\s+optimize\s*\(\s*\"[A-Za-z0-9_,\-=\s]+\"\s*(,\s*\"[A-Za-z0-9_,\-=\s]+\"\s*)*\)$"),
    re.compile(r"GCC\s+target\s*\(\s*\"[A-Za-z0-9_,.\-=\s]+\"\s*(,\s*\"[A-Za-z0-9_,.\-=\s]+\"\s*)*\)$"),
    re.compile(r"GCC\s+unroll\s+\d+$"),
    re.compile(r"GCC\s+ivdep$"),
    re.compile(r"omp\s+simd(\s+[a-z_]+(\([A-Za-z0-9_:+*,\s]*\))?)*$"),
)
BANNED_CALLS = {
    "process": ["system", "fork", "vfork", "clone", "popen", "pclose", "execl", "execlp",
                "execle", "execv", "execvp", "execvpe", "execve", "posix_spawn",
                "posix_spawnp", "kill", "ptrace", "wait", "waitpid", "exit", "_exit",
                "_Exit", "abort", "atexit", "at_quick_exit", "quick_exit", "signal",
                "sigaction", "raise", "setjmp", "longjmp", "main"],
    "file or I/O": ["fopen", "freopen", "fdopen", "open", "openat", "creat", "close", "read",
                    "write", "pread", "pwrite", "unlink", "remove", "rename", "chmod",
                    "mkdir", "rmdir", "printf", "fprintf", "puts", "fputs", "putchar",
                    "fwrite", "fread", "perror", "dup", "dup2", "ioctl", "fcntl", "stdin",
                    "stdout", "stderr", "FILE"],
    "network": ["socket", "connect", "bind", "listen", "accept", "send", "recv", "sendto",
                "recvfrom", "getaddrinfo", "gethostbyname"],
    "system or loader": ["syscall", "dlopen", "dlsym", "dlclose", "mmap", "munmap",
                         "mprotect", "getenv", "setenv", "putenv", "unsetenv", "environ",
                         "sysconf", "prctl", "setrlimit", "getpid", "sbrk", "brk",
                         "__builtin_apply", "__builtin_apply_args", "__builtin_frame_address",
                         "__builtin_return_address", "__builtin_extract_return_addr"],
    "threads": ["pthread_create", "thrd_create", "pthread_t", "thrd_t", "__thread",
                "_Thread_local"],
}
BANNED_ATTRIBUTES = ("constructor", "destructor", "section", "alias", "ifunc", "weakref",
                     "naked", "init_priority", "cleanup", "visibility", "used")


def _strip_comments_and_strings(code: str) -> str:
    """Blank out comments and string/char literals, keeping line numbers."""
    out = []
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif code.startswith("/*", i):
            j = code.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in code[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and code[j] != c and code[j] != "\n":
                j += 2 if code[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * max(j - i - 2, 0) + (c if j - i >= 2 else ""))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def check(source: str) -> list[str]:
    """One human-readable reason per violated rule; [] means the candidate may compile."""
    reasons: list[str] = []

    def add(reason: str) -> None:
        if reason not in reasons:
            reasons.append(reason)

    if re.search(r"\?\?[=/'()!<>\-]", source):
        add("trigraphs (??= and friends) are not allowed")
    if "\\\n" in source or "\\\r\n" in source:
        add("line continuations (backslash-newline) are not allowed")
    code = _strip_comments_and_strings(source)
    if re.search(r"%:|<%|%>|<:|:>", code):
        add("digraphs (%: <% %> <: :>) are not allowed")
    if "##" in code:
        add("token pasting (##) is not allowed")
    if re.search(r"\b_Pragma\b", code):
        add("_Pragma is not allowed; use a plain #pragma line")
    if re.search(r"\b(asm|__asm|__asm__)\b", code):
        add("inline assembly (asm) is not allowed")

    for m in re.finditer(r"^[ \t]*#[ \t]*(\w+)", code, re.MULTILINE):
        directive = m.group(1)
        line = _line_of(code, m.start())
        if directive == "include":
            raw = source.splitlines()[line - 1]
            inc = re.search(r"#\s*include\s*<([A-Za-z0-9_./]+)>\s*(//.*|/\*.*)?$", raw)
            if not inc:
                add(f"line {line}: only #include <header> of a standard header is allowed")
            elif inc.group(1) not in ALLOWED_HEADERS:
                add(f"line {line}: header <{inc.group(1)}> is not allowed (allowed: "
                    + ", ".join(sorted(ALLOWED_HEADERS)) + ")")
        elif directive == "pragma":
            raw = source.splitlines()[line - 1].split("#", 1)[1].strip()[len("pragma"):]
            raw = re.sub(r"//.*$", "", raw).strip()
            if not any(p.match(raw) for p in ALLOWED_PRAGMAS):
                add(f"line {line}: #pragma {raw[:40]} is not allowed (allowed: GCC optimize, "
                    "GCC target, GCC unroll, GCC ivdep, omp simd)")
        elif directive in ("include_next", "import", "line", "embed"):
            add(f"line {line}: #{directive} is not allowed")

    for category, names in BANNED_CALLS.items():
        for name in names:
            m = re.search(rf"(?<![\w$]){re.escape(name)}(?![\w$])", code)
            if m:
                add(f"line {_line_of(code, m.start())}: `{name}` is not allowed ({category}: "
                    "the kernel may only compute)")
    for m in re.finditer(r"__attribute__\s*\(\((.*?)\)\)", code, re.DOTALL):
        for attr in BANNED_ATTRIBUTES:
            if re.search(rf"\b_*{attr}_*\b", m.group(1)):
                add(f"line {_line_of(code, m.start())}: __attribute__(({attr})) is not allowed")
    if re.search(r"\[\[\s*(gnu::)?(constructor|destructor)", code):
        add("constructor/destructor attributes are not allowed")
    return reasons
