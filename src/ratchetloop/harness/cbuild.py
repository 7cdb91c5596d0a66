"""gcc builds for a C evaluation: one trusted driver, one worker binary per implementation.

* The **driver** (`rl_driver`) links the harness (c/rl_driver.c), the experiment's
  driver.c and a generated stub with the target's prototype; it holds no implementation.
* Each **worker** links one implementation, the worker loop (c/rl_worker.c) and a
  generated `rl_invoke` that unpacks a call from the shared arena. The sanitizer worker
  (validation) is built with ASan+UBSan and copies every pointer argument into a heap
  block of its exact size.

The candidate is preprocessed ONCE and that text is compiled for both the optimised and
the sanitizer build, so the two cannot differ by `#ifdef __SANITIZE_ADDRESS__`, and the
checks on the optimised object hold for both. Those checks look at what the compiler
produced, not at names in the source (a deny-list of names always leaks):

* every undefined symbol must be on an allow-list (libc memory functions, allocation,
  libm, compiler helpers; experiments may extend it), so `fork`, `__clone`, `dlvsym`,
  `open64`, `environ`... fail whatever the source spelled;
* no code that runs before main: no .init_array/.fini_array/.preinit_array/.ctors/.dtors
  or .init/.fini sections, no ifunc symbols, no executable section but .text*;
* no writable data (.data, .bss, TLS... of non-zero size) unless the target allows state,
  so nothing survives from one call to the next in a static.

Its other global symbols are made local (`objcopy --keep-global-symbol`), so a candidate
cannot interpose a function the worker loop uses.

Flags: BASE_FLAGS only (-O2 -std=c11). Candidates raise optimisation or enable AVX2/FMA
themselves with `#pragma GCC optimize/target` or function attributes; the harness never adds
-march=native or -ffast-math.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from .result import HarnessFailure, clip, one_line

HARNESS_C_DIR = Path(__file__).resolve().parent / "c"
DRIVER_SOURCES = ("rl_harness.c", "rl_driver.c")
WORKER_SOURCE = "rl_worker.c"
BASE_FLAGS = ("-O2", "-std=c11")
WARN_FLAGS = ("-Wall", "-Werror=implicit-function-declaration")
# Identical code must time identically wherever the linker puts it: without these, an
# A/A run of the attention kernel measured impl 0 ~20% faster than an identical reference
# (function/loop placement against the 32-byte boundaries the front end cares about).
LAYOUT_FLAGS = ("-falign-functions=64", "-Wa,-mbranches-within-32B-boundaries")
SANITIZE_FLAGS = ("-g1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all")
LINK_FLAGS = ("-Wl,-z,relro,-z,now", "-Wl,-z,noexecstack")
CANDIDATE = "candidate"

_MATH = ("exp exp2 exp10 expm1 log log2 log10 log1p logb sqrt cbrt pow fabs fma fmin fmax "
         "fdim floor ceil round trunc lrint llrint lround llround nearbyint rint sin cos tan "
         "sincos sinh cosh tanh asin acos atan atan2 asinh acosh atanh erf erfc hypot ldexp "
         "frexp modf copysign fmod remainder remquo scalbn scalbln ilogb tgamma lgamma "
         "nextafter nan").split()
C_ALLOWED_IMPORTS = frozenset(
    ["memcpy", "memmove", "memset", "memcmp", "memchr", "malloc", "calloc", "realloc",
     "free", "aligned_alloc", "posix_memalign", "__stack_chk_fail", "__stack_chk_guard",
     "_GLOBAL_OFFSET_TABLE_", "__memcpy_chk", "__memset_chk", "__memmove_chk"]
    + [f"{m}{s}" for m in _MATH for s in ("", "f", "l")])
# libgcc arithmetic helpers, libmvec vector maths, glibc's *_finite aliases
C_ALLOWED_IMPORT_PATTERNS = (
    re.compile(r"__(u?(div|mod)[td]i3|(popcount|clz|ctz|ffs|parity|bswap)[sdt]i2|mulo[sdt]i4|"
               r"(extend|trunc)[hsdxt]f[hsdxt]f2|float(un)?[sdt]i[sdxt]f|fix(uns)?[sdxt]f[sdt]i|"
               r"powi[sdx]f2|(mul|div)[sdx]c3)"),
    re.compile(r"_ZGV[bcde][NM]\d+[uvl]+_\w+"),
    re.compile(r"__\w+_finite"),
)
SANITIZER_IMPORT = re.compile(r"__(asan|ubsan|sanitizer|lsan)_\w+")
CTOR_SECTION = re.compile(r"^\.(init_array|fini_array|preinit_array|ctors|dtors|init|fini)"
                          r"(\..*)?$")
SECTION_LINE = re.compile(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+"
                          r"([0-9a-f]+)\s+[0-9a-f]+\s+([A-Za-z]*)\s+\d+\s+\d+\s+\d+\s*$")


@dataclass(frozen=True)
class Param:
    ctype: str
    name: str
    kind: Literal["ptr", "int", "float"]


@dataclass(frozen=True)
class CTarget:
    """The one function a C experiment optimises.

    signature: its prototype with `{name}` where the function name goes, e.g.
    "void {name}(float* out, const float* inp, int n)". allowed_imports extends the
    allow-list of symbols the compiled candidate may use; state=True allows writable
    data (statics) in the candidate object.
    """

    function: str
    signature: str
    cc: str = "gcc"
    compile_timeout: float = 60.0
    allowed_imports: tuple[str, ...] = ()
    state: bool = False

    def prototype(self, name: str) -> str:
        return self.signature.format(name=name) + ";"

    def params(self) -> list[Param]:
        return parse_params(self.signature)


def parse_params(signature: str) -> list[Param]:
    """The parameters of a `void {name}(...)` prototype, each a pointer, integer or float."""
    head, _, rest = signature.partition("(")
    if not head.strip().startswith("void ") or not rest.rstrip().endswith(")"):
        raise ValueError(f"the harness needs a `void {{name}}(...)` prototype: {signature!r}")
    inner = rest.rstrip()[:-1].strip()
    params: list[Param] = []
    for raw in ([] if inner in ("", "void") else inner.split(",")):
        m = re.match(r"^(.*?)([A-Za-z_]\w*)\s*$", raw.strip())
        if not m or not m.group(1).strip() or "[" in raw:
            raise ValueError(f"cannot read parameter {raw.strip()!r} of {signature!r}")
        ctype = m.group(1).strip()
        kind: Literal["ptr", "int", "float"] = (
            "ptr" if "*" in ctype else
            "float" if re.search(r"\b(float|double)\b", ctype) else "int")
        params.append(Param(ctype, m.group(2), kind))
    if len(params) > 16:
        raise ValueError("the harness passes at most 16 arguments")
    return params


@dataclass(frozen=True)
class Impl:
    """One implementation: `name` is "candidate" or a reference name."""

    name: str
    source: Path


@dataclass
class Worker:
    name: str
    binary: Path
    sanitized: bool = False


@dataclass
class Compiled:
    impl: Impl
    obj: Path
    log: str = ""


@dataclass
class Build:
    driver: Path
    workers: list[Worker]
    log: str = ""
    objects: dict[str, Path] = field(default_factory=dict)

    @property
    def impl_names(self) -> list[str]:
        return [w.name for w in self.workers]


def _run(argv: Sequence[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HarnessFailure("timeout", f"{Path(argv[0]).name} exceeded {timeout:.0f}s",
                             " ".join(argv), phase="build") from None


def tidy_diagnostics(text: str, *folders: Path) -> str:
    """Strip temp-dir prefixes so the model sees `candidate.c:12:5: error: ...`."""
    for folder in folders:
        text = text.replace(str(folder) + "/", "")
    return text


def first_error(diagnostics: str) -> str:
    for line in diagnostics.splitlines():
        if "error:" in line or "undefined reference" in line:
            return one_line(line)
    return one_line(diagnostics) or "compilation failed"


def _fail_build(impl: Impl, diag: str, message: str | None = None) -> HarnessFailure:
    if impl.name == CANDIDATE:
        return HarnessFailure("build_error", message or first_error(diag), clip(diag),
                              phase="build")
    return HarnessFailure("harness_error", f"reference {impl.name!r} failed to build: "
                          f"{message or first_error(diag)}", clip(diag), phase="build")


def preprocess(target: CTarget, impl: Impl, out_dir: Path, tag: str) -> tuple[Path, str]:
    """The implementation's source after the preprocessor (line markers kept for errors)."""
    out = out_dir / f"{tag}.i"
    proc = _run([target.cc, *BASE_FLAGS, "-E", str(impl.source), "-o", str(out)], out_dir,
                target.compile_timeout)
    diag = tidy_diagnostics(proc.stderr, impl.source.parent, out_dir)
    if proc.returncode != 0:
        raise _fail_build(impl, diag)
    return out, diag


def compile_impl(target: CTarget, impl: Impl, source: Path, out_dir: Path, tag: str,
                 sanitize: bool = False) -> Compiled:
    """Compile one implementation to an object exporting only the target symbol."""
    obj = out_dir / f"{tag}{'_san' if sanitize else ''}.o"
    flags = [*BASE_FLAGS, *LAYOUT_FLAGS, *WARN_FLAGS, *(SANITIZE_FLAGS if sanitize else ())]
    proc = _run([target.cc, *flags, "-c", str(source), "-o", str(obj)], out_dir,
                target.compile_timeout)
    diag = tidy_diagnostics(proc.stderr, impl.source.parent, out_dir)
    if proc.returncode != 0:
        raise _fail_build(impl, diag)
    if shutil.which("objcopy"):
        loc = _run(["objcopy", f"--keep-global-symbol={target.function}", str(obj)], out_dir,
                   30)
        if loc.returncode != 0:
            raise HarnessFailure("harness_error", "objcopy failed", loc.stderr, phase="build")
    defined = _run(["nm", "-g", "--defined-only", "-P", str(obj)], out_dir, 30)
    names = {line.split()[0] for line in defined.stdout.splitlines() if line.split()}
    if defined.returncode == 0 and target.function not in names:
        raise _fail_build(impl, f"{impl.source.name}: no definition of `{target.function}`\n"
                          + diag, message=f"error: {impl.source.name} does not define "
                          f"{target.function} (it must be an external, non-static function)")
    return Compiled(impl, obj, diag)


def allowed_import(name: str, target: CTarget, sanitized: bool = False) -> bool:
    if name in C_ALLOWED_IMPORTS or name in target.allowed_imports:
        return True
    if sanitized and SANITIZER_IMPORT.fullmatch(name):
        return True
    return any(p.fullmatch(name) for p in C_ALLOWED_IMPORT_PATTERNS)


def inspect_object(target: CTarget, obj: Path, *, sanitized: bool = False) -> list[str]:
    """What the compiled object may not contain; one reason each ([] = fine)."""
    problems: list[str] = []
    syms = _run(["nm", "-P", str(obj)], obj.parent, 30)
    if syms.returncode != 0:
        raise HarnessFailure("harness_error", "nm failed", syms.stderr, phase="build")
    for line in syms.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U" and not allowed_import(name, target, sanitized):
            problems.append(f"uses `{name}`, which a kernel may not call (allowed: memory and "
                            "string functions, malloc/free, libm, compiler helpers)")
        elif kind == "i":
            problems.append(f"`{name}` is an ifunc: its resolver runs before main")
    if sanitized:
        return problems  # sections: the optimised object of the same text decides
    sections = _run(["readelf", "-SW", str(obj)], obj.parent, 30)
    if sections.returncode != 0:
        raise HarnessFailure("harness_error", "readelf failed", sections.stderr, phase="build")
    for line in sections.stdout.splitlines():
        m = SECTION_LINE.match(line)
        if not m:
            continue
        name, size, flags = m.group(1), int(m.group(2), 16), m.group(3)
        if CTOR_SECTION.match(name):
            problems.append(f"section {name}: constructors, destructors and init code are "
                            "not allowed (code that runs outside the calls)")
        elif "X" in flags and not (name == ".text" or name.startswith(".text.")):
            problems.append(f"executable section {name} outside .text")
        elif "W" in flags and size and not target.state:
            problems.append(f"writable data ({name}, {size} bytes): statics and globals keep "
                            "state between calls, which this experiment forbids")
    return problems


# ---------------------------------------------------------------- generated glue


def stub_source(target: CTarget) -> str:
    """The driver's stand-in for the implementation: same prototype, runs the call remotely."""
    params = target.params()
    decl = ", ".join(f"{p.ctype} p{i}" for i, p in enumerate(params)) or "void"
    body = []
    for i, p in enumerate(params):
        fn = {"ptr": "rl_call_ptr", "int": "rl_call_int", "float": "rl_call_f64"}[p.kind]
        cast = {"ptr": "", "int": "(int64_t)", "float": "(double)"}[p.kind]
        body.append(f"    {fn}(&c, {i}, {cast}p{i});")
    return ('#include <string.h>\n#include "rl_harness.h"\n\n'
            f"static void rl_stub({decl}) {{\n    rl_call c;\n    memset(&c, 0, sizeof c);\n"
            + "\n".join(body) + "\n    rl_remote(&c);\n}\n\n"
            "const rl_fnptr rl_stub_fn = (rl_fnptr)rl_stub;\n")


def invoke_source(target: CTarget) -> str:
    """The worker's side: unpack one call from the arena and make it."""
    params = target.params()
    fn = target.function
    names = ", ".join(f"p{i}" for i in range(len(params)))
    direct, copy_in, copy_out = [], [], []
    for i, p in enumerate(params):
        if p.kind == "ptr":
            direct.append(f"({p.ctype})(c->a[{i}] < 0 ? (void *)0 : (void *)(base + c->a[{i}]))")
            copy_in.append(f"    {p.ctype} p{i} = ({p.ctype})rl_arg_in(base, {i}, c->a[{i}], "
                           f"c->size[{i}]);")
            copy_out.append(f"    rl_arg_out(base, {i}, c->a[{i}], c->size[{i}], p{i});")
        else:
            value = f"rl_f64(c->a[{i}])" if p.kind == "float" else f"c->a[{i}]"
            direct.append(f"({p.ctype}){value}")
            copy_in.append(f"    {p.ctype} p{i} = ({p.ctype}){value};")
    return ('#include <stdint.h>\n#include <string.h>\n#include "rl_harness.h"\n\n'
            f"{target.prototype(fn)}\n"
            "void *rl_arg_in(char *base, int i, int64_t off, int64_t size);\n"
            "void rl_arg_out(char *base, int i, int64_t off, int64_t size, const void *p);\n"
            "static inline double rl_f64(int64_t bits) {\n"
            "    double d;\n    memcpy(&d, &bits, sizeof d);\n    return d;\n}\n\n"
            "void rl_invoke(char *base, const rl_call *c) {\n#ifdef RL_COPY_ARGS\n"
            + "\n".join(copy_in) + f"\n    {fn}({names});\n" + "\n".join(copy_out)
            + "\n#else\n    " + f"{fn}(" + ",\n        ".join(direct) + ");\n#endif\n}\n")


def build_driver(target: CTarget, driver_sources: Sequence[Path], out_dir: Path) -> Path:
    """The trusted driver: harness + the experiment's driver.c + the remote stub."""
    stub = out_dir / "rl_stub.c"
    stub.write_text(stub_source(target), encoding="utf-8")
    binary = out_dir / "rl_driver"
    sources = [str(HARNESS_C_DIR / s) for s in DRIVER_SOURCES]
    argv = [target.cc, *BASE_FLAGS, *WARN_FLAGS, f"-I{HARNESS_C_DIR}", *sources,
            *map(str, driver_sources), str(stub), "-o", str(binary), "-lm"]
    proc = _run(argv, out_dir, target.compile_timeout)
    if proc.returncode != 0:
        raise HarnessFailure("harness_error", "building the driver failed",
                             clip(tidy_diagnostics(proc.stderr, out_dir)), phase="build")
    return binary


def link_worker(target: CTarget, compiled: Compiled, out_dir: Path, tag: str,
                sanitize: bool = False, libs: Sequence[str] = ()) -> Worker:
    """One implementation's worker binary (the sanitizer one copies pointer arguments).
    libs: extra linker arguments, for trusted references only (a benchmark's BLAS)."""
    invoke = out_dir / "rl_invoke.c"
    if not invoke.exists():
        invoke.write_text(invoke_source(target), encoding="utf-8")
    binary = out_dir / f"worker_{tag}{'_san' if sanitize else ''}"
    defs = ["-DRL_SANITIZER", "-DRL_COPY_ARGS"] if sanitize else []
    flags = [*BASE_FLAGS, *(SANITIZE_FLAGS if sanitize else ()), *LINK_FLAGS]
    argv = [target.cc, *flags, *defs, f"-I{HARNESS_C_DIR}", str(HARNESS_C_DIR / WORKER_SOURCE),
            str(invoke), str(compiled.obj), "-o", str(binary), *libs, "-lm"]
    proc = _run(argv, out_dir, target.compile_timeout)
    diag = tidy_diagnostics(proc.stderr, out_dir, HARNESS_C_DIR)
    if proc.returncode != 0:
        if "undefined reference" in diag or "multiple definition" in diag:
            raise _fail_build(compiled.impl, diag)
        raise HarnessFailure("harness_error", "linking a worker failed", clip(diag),
                             phase="build")
    return Worker(compiled.impl.name, binary, sanitize)


def check_candidate(target: CTarget, fast: Compiled, san: Compiled | None) -> None:
    """Refuse a candidate object that imports, initialises or keeps what it may not."""
    problems = inspect_object(target, fast.obj)
    if san is not None:
        problems += [p for p in inspect_object(target, san.obj, sanitized=True)
                     if p not in problems]
    if problems:
        raise HarnessFailure("integrity", f"object check: {problems[0]}",
                             "\n".join(f"- {p}" for p in problems), phase="build")


def build(target: CTarget, impls: Sequence[Impl], driver_sources: Sequence[Path],
          out_dir: Path, *, sanitize: bool = False, check: bool = True,
          driver: Path | None = None, libs: dict[str, Sequence[str]] | None = None) -> Build:
    """The driver and one worker per implementation (impls[0] is "the candidate": its
    object is checked when `check`); sanitizer workers when `sanitize`. libs: extra linker
    arguments by implementation name (trusted references only, e.g. a benchmark's BLAS)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    impls = [Impl(i.name, Path(i.source).resolve()) for i in impls]
    if not impls:
        raise ValueError("nothing to build")
    with ThreadPoolExecutor(max_workers=2) as pool:
        drv = None if driver else pool.submit(build_driver, target,
                                              [Path(d).resolve() for d in driver_sources],
                                              out_dir)
        first, log = preprocess(target, impls[0], out_dir, "impl0")
        futures = [pool.submit(compile_impl, target, impl, first if k == 0 else impl.source,
                               out_dir, f"impl{k}", sanitize) for k, impl in enumerate(impls)]
        compiled = [f.result() for f in futures]
        if check:
            if sanitize:
                fast = compile_impl(target, impls[0], first, out_dir, "impl0")
                check_candidate(target, fast, compiled[0])
            else:
                check_candidate(target, compiled[0], None)
        extra = libs or {}
        workers = list(pool.map(lambda kc: link_worker(
            target, kc[1], out_dir, f"impl{kc[0]}", sanitize,
            extra.get(kc[1].impl.name, ())), enumerate(compiled)))
        binary = drv.result() if drv is not None else cast(Path, driver)
    return Build(driver=binary, workers=workers, log=log + "".join(c.log for c in compiled),
                 objects={c.impl.name: c.obj for c in compiled})


def build_each(target: CTarget, impls: Sequence[Impl], driver_sources: Sequence[Path],
               out_dir: Path, *, sanitize: bool = False, check: bool = True) -> list[Build]:
    """One single-worker Build per implementation, all sharing one driver (for validating
    many implementations, e.g. every rendering of a tuner template)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    driver = build_driver(target, [Path(d).resolve() for d in driver_sources], out_dir)

    def one(k: int) -> Build:
        return build(target, [impls[k]], driver_sources, out_dir / f"w{k}", sanitize=sanitize,
                     check=check, driver=driver)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, range(len(impls))))
