"""A first filter on C kernel sources, shared by the C experiments' security.py.

Not the wall. The wall is what runs after it: the object checks in cbuild (imports on an
allow-list, no constructors, no writable data), the worker's seccomp filter, and the
sandbox. A name deny-list always leaks (`_Fork`, `__clone`, `dlvsym`, an `extern` libc
global...), so this filter exists to reject the obvious early, with a message a model can
act on, and to close the textual tricks that would smuggle past it: trigraphs and
digraphs, line splices, token pasting, computed includes, `_Pragma`, attributes written
with odd spacing, and optimisation strings that turn on fast-math (the contract forbids
it; the tolerance would not always notice).

Each violated rule yields one reason; [] means the candidate may go on to compile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BASE_HEADERS = frozenset({"stddef.h", "stdint.h", "stdbool.h", "string.h", "math.h",
                          "float.h", "limits.h", "stdlib.h", "immintrin.h"})
X86_HEADERS = frozenset({"xmmintrin.h", "emmintrin.h", "pmmintrin.h", "tmmintrin.h",
                         "smmintrin.h", "nmmintrin.h"})
ALLOWED_DIRECTIVES = {"include", "define", "undef", "if", "ifdef", "ifndef", "elif", "else",
                      "endif", "pragma"}
_OPTION = r'"[\w,.=+\-\s]+"'
ALLOWED_PRAGMAS = (
    re.compile(rf"GCC\s+(optimize|target)\s*\(\s*{_OPTION}(\s*,\s*{_OPTION})*\s*\)"),
    re.compile(r"GCC\s+unroll\s+\d+"),
    re.compile(r"GCC\s+ivdep"),
    re.compile(r"omp\s+simd(\s+[a-z_]+(\([A-Za-z0-9_:+*,\s]*\))?)*"),
)
# optimisation options that change floating-point results: the contract says no fast-math
FAST_MATH = re.compile(r"Ofast|fast-math|unsafe-math|associative-math|reciprocal-math|"
                       r"finite-math|no-signed-zeros|no-trapping-math|cx-limited-range|"
                       r"excess-precision|rounding-math", re.IGNORECASE)
FORBIDDEN_NAMES = {
    # processes, signals, timers, exits
    "system", "popen", "pclose", "fork", "vfork", "_Fork", "clone", "__clone", "clone3",
    "execl", "execlp", "execle", "execv", "execvp", "execvpe", "execve", "fexecve",
    "posix_spawn", "posix_spawnp", "daemon", "setsid", "kill", "tgkill", "raise", "signal",
    "bsd_signal", "sysv_signal", "ssignal", "sigset", "sigaction", "signalfd", "alarm",
    "ualarm", "setitimer", "getitimer", "timer_create", "timer_settime", "timerfd_create",
    "abort", "exit", "_exit", "_Exit", "atexit", "on_exit", "at_quick_exit", "quick_exit",
    "setjmp", "longjmp", "sigsetjmp", "siglongjmp", "ptrace", "syscall", "prctl", "wait",
    "waitpid", "wait3", "wait4", "getpid", "getppid", "setrlimit", "sysconf", "nice",
    "setpriority", "sched_setaffinity", "sched_setscheduler", "main",
    # files, streams, environment
    "open", "open64", "openat", "openat64", "creat", "creat64", "close", "read", "write",
    "pread", "pwrite", "readv", "writev", "fopen", "fopen64", "freopen", "fdopen", "fclose",
    "fread", "fwrite", "printf", "fprintf", "dprintf", "vprintf", "vfprintf", "vdprintf",
    "puts", "fputs", "putchar", "perror", "remove", "rename", "unlink", "getenv",
    "secure_getenv", "setenv", "putenv", "unsetenv", "environ", "__environ", "chdir", "ioctl",
    "fcntl", "dup", "dup2", "dup3", "pipe", "stdin", "stdout", "stderr", "FILE", "chmod",
    "mkdir", "rmdir", "truncate", "ftruncate",
    # memory mapping, dynamic loading, threads
    "mmap", "mmap64", "munmap", "mprotect", "mremap", "memfd_create", "brk", "sbrk", "dlopen",
    "dlmopen", "dlsym", "dlvsym", "dlclose", "process_vm_readv", "process_vm_writev",
    # network
    "socket", "socketpair", "connect", "bind", "listen", "accept", "send", "recv", "sendto",
    "recvfrom", "sendmsg", "recvmsg", "getaddrinfo", "gethostbyname",
}
FORBIDDEN_PREFIXES = re.compile(r"(pthread|thrd|mtx|cnd|tss|__libc|__sys|posix_spawn)_\w*")
ALLOWED_BUILTINS = {
    "__builtin_expect", "__builtin_prefetch", "__builtin_assume_aligned", "__builtin_memcpy",
    "__builtin_memset", "__builtin_fmaf", "__builtin_fma", "__builtin_expf", "__builtin_exp",
    "__builtin_sqrtf", "__builtin_sqrt", "__builtin_fabsf", "__builtin_fabs",
    "__builtin_inff", "__builtin_inf", "__builtin_huge_valf", "__builtin_huge_val",
    "__builtin_isfinite", "__builtin_isinf", "__builtin_isnan", "__builtin_unreachable",
    "__builtin_nanf", "__builtin_nan", "__builtin_ctz", "__builtin_clz",
    "__builtin_popcount",
}
FORBIDDEN_ATTRIBUTES = {"constructor", "destructor", "section", "ifunc", "alias", "weak",
                        "weakref", "visibility", "used", "externally_visible", "naked",
                        "init_priority", "cleanup", "no_instrument_function", "symver"}
IDENT = re.compile(r"[A-Za-z_]\w*")
STATIC = re.compile(r"\bstatic\b([^;={]*)([;={]?)")
CONST_DECL = re.compile(r"\s+const\s+[A-Za-z_][\w\s]*?\s[A-Za-z_]\w*\s*(\[[^\]]*\]\s*)*$")
ATTRIBUTE = re.compile(r"\b__attribute\w*\s*\(\s*\((.*?)\)\s*\)", re.DOTALL)
STD_ATTRIBUTE = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)


def check_c_source(source: str, *, headers: Iterable[str] = BASE_HEADERS,
                   statics: bool = False, builtins: Iterable[str] = ()) -> list[str]:
    """Reasons to reject a C kernel source. `headers`: the <headers> it may include;
    `statics`: whether non-const statics (state kept between calls) are allowed;
    `builtins`: __builtin_* names allowed beyond ALLOWED_BUILTINS (an experiment that
    allows `__builtin_cpu_supports` must also allow its import, `__cpu_model`)."""
    allowed_builtins = ALLOWED_BUILTINS | set(builtins)
    reasons: list[str] = []
    allowed_headers = set(headers)
    if re.search(r"\?\?[=/'()!<>\-]", source):
        reasons.append("trigraphs (??= and friends) are not allowed")
    if re.search(r"\\\r?\n", source):
        reasons.append("line continuations (backslash-newline) are not allowed")
    visible = _strip_comments(source)  # string literals kept: includes and pragmas
    code = _strip_literals(visible)
    if re.search(r"%:|<%|%>|<:|:>", code):
        reasons.append("digraphs (%: <% %> <: :>) are not allowed")
    if "##" in code:
        reasons.append("token pasting (##) is not allowed")
    if re.search(r"\\[uU][0-9A-Fa-f]", code):
        reasons.append("universal character names outside strings are not allowed")
    reasons += _directives(visible, allowed_headers)

    names = set(IDENT.findall(code))
    for name in sorted(n for n in names if n in FORBIDDEN_NAMES
                       or FORBIDDEN_PREFIXES.fullmatch(n)):
        reasons.append(f"`{name}` is not allowed: the kernel may only compute (no I/O, "
                       "processes, signals, timers, files, mappings, threads or network)")
    for name in sorted(n for n in names if n.startswith("__builtin_")
                       and n not in allowed_builtins and not n.startswith("__builtin_ia32_")):
        reasons.append(f"`{name}` is not allowed")
    if names & {"asm", "__asm__", "__asm"}:
        reasons.append("inline assembly (asm) is not allowed; use intrinsics")
    if "_Pragma" in names:
        reasons.append("_Pragma is not allowed; use a plain #pragma line")
    if names & {"_Thread_local", "__thread", "thread_local"}:
        reasons.append("thread-local state is not allowed")
    if "extern" in names:
        reasons.append("`extern` declarations are not allowed: a kernel uses no outside "
                       "state")
    reasons += _attributes(code, visible)
    if not statics and any(not _constant_table(m.group(1), m.group(2))
                           for m in STATIC.finditer(code)):
        reasons.append("`static` variables are not allowed: no state may survive between "
                       "calls (use `static const` for constant tables, locals or malloc "
                       "for scratch)")
    reasons += _file_scope(code)
    return list(dict.fromkeys(reasons))


def _directives(visible: str, headers: set[str]) -> list[str]:
    reasons = []
    for number, line in enumerate(visible.splitlines(), 1):
        m = re.match(r"\s*#\s*(\w*)(.*)$", line)
        if not m:
            continue
        directive, rest = m.group(1), m.group(2).strip()
        if directive not in ALLOWED_DIRECTIVES:
            reasons.append(f"line {number}: #{directive} is not allowed")
        elif directive == "include":
            inc = re.fullmatch(r"<([\w./]+)>", rest)
            if not inc:
                reasons.append(f"line {number}: only #include <header> of a standard header "
                               "is allowed")
            elif inc.group(1) not in headers:
                reasons.append(f"line {number}: header <{inc.group(1)}> is not allowed "
                               f"(allowed: {', '.join(sorted(headers))})")
        elif directive == "pragma":
            if not any(p.fullmatch(rest) for p in ALLOWED_PRAGMAS):
                reasons.append(f"line {number}: #pragma {' '.join(rest.split()[:2])} is not "
                               "allowed (allowed: GCC optimize, GCC target, GCC unroll, GCC "
                               "ivdep, omp simd)")
            elif FAST_MATH.search(rest):
                reasons.append(f"line {number}: {rest[:60]} turns on fast-math, which the "
                               "contract forbids (results must not depend on it)")
    return reasons


def _attributes(code: str, visible: str) -> list[str]:
    reasons = []
    for m in list(ATTRIBUTE.finditer(code)) + list(STD_ATTRIBUTE.finditer(code)):
        for attr in sorted({a.strip("_") for a in IDENT.findall(m.group(1))}
                           & FORBIDDEN_ATTRIBUTES):
            reasons.append(f"__attribute__(({attr})) is not allowed")
    for m in ATTRIBUTE.finditer(visible):
        if re.search(r"\boptimize\b", m.group(1)) and FAST_MATH.search(m.group(1)):
            reasons.append("an optimize attribute turns on fast-math, which the contract "
                           "forbids")
    return reasons


def _constant_table(declarator: str, follows: str) -> bool:
    """`static const float t[] = {...}` (initialised, no pointer) is the one static allowed."""
    return follows == "=" and CONST_DECL.fullmatch(declarator) is not None


def _file_scope(code: str) -> list[str]:
    """Only includes, pragmas, macros, typedefs and functions at file scope: no globals."""
    top = re.sub(r"^\s*#.*$", "", _top_level(code), flags=re.MULTILINE)
    for stmt in top.split(";"):
        stmt = stmt.strip()
        if stmt and not stmt.startswith("typedef") and "{}" not in stmt.replace(" ", ""):
            return ["file-scope declarations are not allowed (only includes, pragmas, "
                    f"macros, typedefs and the one function): `{stmt[:60]}`"]
    return []


def _top_level(code: str) -> str:
    """The code outside every brace pair (function bodies and initialisers removed)."""
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


def _strip_comments(source: str) -> str:
    """Comments blanked (newlines kept), string literals kept."""
    pattern = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
                         re.DOTALL)

    def blank(m: re.Match[str]) -> str:
        tok = m.group(0)
        return re.sub(r"[^\n]", " ", tok) if tok.startswith(("//", "/*")) else tok

    return pattern.sub(blank, source)


def _strip_literals(code: str) -> str:
    """String and character literals reduced to empty quotes."""
    return re.sub(r"\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'",
                  lambda m: m.group(0)[0] * 2, code)
