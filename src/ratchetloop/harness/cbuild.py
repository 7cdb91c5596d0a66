"""gcc builds: every implementation in its own object, target symbol renamed, one binary.

Each implementation (candidate, references) is compiled from its own source with
`-D<fn>=<fn>__rl_<tag>`, so they can all live in one benchmark binary and be timed in one
process. Its other global symbols are then made local with `objcopy --keep-global-symbol`,
so two implementations that both define a helper named `pack` do not clash at link time.
A generated rl_impls.c lists the renamed symbols (index 0 = the candidate).

Flags: BASE_FLAGS only (-O2 -std=c11). Candidates raise optimisation or enable AVX2/FMA
themselves with `#pragma GCC optimize/target` or function attributes; the harness never adds
-march=native or -ffast-math. The validation build adds SANITIZE_FLAGS.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .result import HarnessFailure, clip, one_line

HARNESS_C_DIR = Path(__file__).resolve().parent / "c"
HARNESS_SOURCES = ("rl_harness.c", "rl_main.c")
BASE_FLAGS = ("-O2", "-std=c11")
WARN_FLAGS = ("-Wall", "-Werror=implicit-function-declaration")
# Identical code must time identically wherever the linker puts it: without these, an
# A/A run of the attention kernel measured impl 0 ~20% faster than an identical reference
# (function/loop placement against the 32-byte boundaries the front end cares about).
LAYOUT_FLAGS = ("-falign-functions=64", "-Wa,-mbranches-within-32B-boundaries")
SANITIZE_FLAGS = ("-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all")
CANDIDATE = "candidate"


@dataclass(frozen=True)
class CTarget:
    """The one function a C experiment optimises.

    signature: its prototype with `{name}` where the function name goes, e.g.
    "void {name}(float* out, const float* inp, int n)".
    """

    function: str
    signature: str
    cc: str = "gcc"
    compile_timeout: float = 60.0

    def prototype(self, name: str) -> str:
        return self.signature.format(name=name) + ";"


@dataclass(frozen=True)
class Impl:
    """One implementation to link: `name` is "candidate" or a reference name."""

    name: str
    source: Path


@dataclass
class Build:
    binary: Path
    impl_names: list[str]
    log: str = ""
    symbols: dict[str, str] = field(default_factory=dict)


def symbol_for(target: CTarget, index: int) -> str:
    return f"{target.function}__rl_{'cand' if index == 0 else f'ref{index}'}"


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


def compile_impl(target: CTarget, impl: Impl, index: int, out_dir: Path,
                 sanitize: bool = False) -> tuple[Path, str]:
    """Compile one implementation to an object exporting only its renamed target symbol.

    Returns the object and the compiler's warnings (kept in the build log)."""
    symbol = symbol_for(target, index)
    obj = out_dir / f"impl{index}{'_san' if sanitize else ''}.o"
    flags = [*BASE_FLAGS, *LAYOUT_FLAGS, *WARN_FLAGS, *(SANITIZE_FLAGS if sanitize else ())]
    argv = [target.cc, *flags, f"-D{target.function}={symbol}", "-c", str(impl.source),
            "-o", str(obj)]
    proc = _run(argv, out_dir, target.compile_timeout)
    diag = tidy_diagnostics(proc.stderr, impl.source.parent, out_dir)
    if proc.returncode != 0:
        _raise_build(impl, diag)
    if shutil.which("objcopy"):
        loc = _run(["objcopy", f"--keep-global-symbol={symbol}", str(obj)], out_dir, 30)
        if loc.returncode != 0:
            raise HarnessFailure("harness_error", "objcopy failed", loc.stderr, phase="build")
    nm = _run(["nm", "-g", "--defined-only", str(obj)], out_dir, 30) if shutil.which("nm") \
        else None
    if nm is not None and nm.returncode == 0 and symbol not in nm.stdout.split():
        _raise_build(impl, f"{impl.source.name}: no definition of `{target.function}` found\n"
                     + diag, message=f"error: {impl.source.name} does not define "
                     f"{target.function} (it must be an external, non-static function)")
    return obj, diag


def _raise_build(impl: Impl, diag: str, message: str | None = None) -> None:
    if impl.name == CANDIDATE:
        raise HarnessFailure("build_error", message or first_error(diag), clip(diag),
                             phase="build")
    raise HarnessFailure("harness_error", f"reference {impl.name!r} failed to build: "
                         f"{message or first_error(diag)}", clip(diag), phase="build")


def write_impl_table(target: CTarget, count: int, names: Sequence[str], path: Path) -> None:
    """The generated rl_impls.c: prototypes and the table rl_main.c iterates over."""
    symbols = [symbol_for(target, i) for i in range(count)]
    lines = ['#include "rl_harness.h"', ""]
    lines += [target.prototype(s) for s in symbols]
    lines.append("const rl_fnptr rl_impl_fns[] = {"
                 + ", ".join(f"(rl_fnptr){s}" for s in symbols) + "};")
    quoted = ", ".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in names)
    lines.append(f"const char *const rl_impl_names[] = {{{quoted}}};")
    lines.append(f"const int rl_n_impls = {count};")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(target: CTarget, impls: Sequence[Impl], driver_sources: Sequence[Path],
          out_dir: Path, *, sanitize: bool = False, name: str | None = None) -> Build:
    """Compile impls (in parallel) and link them with the harness and the driver.

    impls[0] is what `validate` and the timing protocol call "the candidate"."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    impls = [Impl(i.name, Path(i.source).resolve()) for i in impls]
    driver_sources = [Path(d).resolve() for d in driver_sources]
    if not impls:
        raise ValueError("nothing to build")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(compile_impl, target, impl, i, out_dir, sanitize)
                   for i, impl in enumerate(impls)]
        compiled = [f.result() for f in futures]
    objects = [obj for obj, _ in compiled]
    warnings = "".join(diag for _, diag in compiled)
    suffix = "_san" if sanitize else ""
    table = out_dir / f"rl_impls{suffix}.c"
    write_impl_table(target, len(impls), [i.name for i in impls], table)
    binary = out_dir / (name or f"rl_bench{suffix}")
    flags = [*BASE_FLAGS, *(SANITIZE_FLAGS if sanitize else ())]
    sources = [str(HARNESS_C_DIR / s) for s in HARNESS_SOURCES]
    argv = [target.cc, *flags, f"-I{HARNESS_C_DIR}", *sources, *map(str, driver_sources),
            str(table), *map(str, objects), "-o", str(binary), "-lm"]
    proc = _run(argv, out_dir, target.compile_timeout)
    diag = tidy_diagnostics(proc.stderr, out_dir, HARNESS_C_DIR)
    if proc.returncode != 0:
        if "undefined reference" in diag or "multiple definition" in diag:
            # the candidate calls something that does not exist or redefines a symbol
            raise HarnessFailure("build_error", first_error(diag), clip(diag), phase="build")
        raise HarnessFailure("harness_error", "linking the harness failed", clip(diag),
                             phase="build")
    return Build(binary=binary, impl_names=[i.name for i in impls], log=warnings + diag,
                 symbols={i.name: symbol_for(target, k) for k, i in enumerate(impls)})
