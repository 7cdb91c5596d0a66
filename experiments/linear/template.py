"""Offline-tuner template: render(knobs) -> a complete, correct matmul_forward source.

Every knob combination declared in experiment.json yields one function (no helpers; all
logic is inline) that handles any B, T, C, OC >= 1, NULL bias and unaligned pointers:
  simd        avx2 (AVX2+FMA via #pragma GCC target, 8 floats per vector) or scalar
  oc_block    output channels per register block
  bt_block    token rows per register block (bt_block * oc_block dot products in flight)
  unroll      independent accumulator sets along C (hides FMA latency for small blocks)
  loop_order  oc_outer keeps an oc_block of weight rows hot while sweeping all tokens;
              bt_outer sweeps all weights once per token block
  opt         optimisation level requested with #pragma GCC optimize
Edges (BT % bt_block, OC % oc_block, C % (8*unroll)) fall back to a one-output loop with a
scalar tail, so the fast path never reads past a row.
"""

from __future__ import annotations

import itertools
from typing import Any

KNOBS: dict[str, list[Any]] = {
    "simd": ["avx2", "scalar"],
    "oc_block": [1, 2, 3, 4],
    "bt_block": [1, 2, 4],
    "unroll": [1, 2],
    "loop_order": ["oc_outer", "bt_outer"],
    "opt": ["O3", "O2"],
}
DEFAULTS = {"simd": "avx2", "oc_block": 3, "bt_block": 4, "unroll": 1,
            "loop_order": "oc_outer", "opt": "O3"}


def combinations() -> list[dict[str, Any]]:
    keys = list(KNOBS)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*KNOBS.values())]


class _Vec:
    """Spelling of the vector operations for one simd choice."""

    def __init__(self, simd: str) -> None:
        self.avx = simd == "avx2"
        self.width = 8 if self.avx else 1
        self.type = "__m256" if self.avx else "float"
        self.zero = "_mm256_setzero_ps()" if self.avx else "0.0f"

    def load(self, ptr: str) -> str:
        return f"_mm256_loadu_ps({ptr})" if self.avx else f"*({ptr})"

    def fma(self, a: str, b: str, acc: str) -> str:
        return f"_mm256_fmadd_ps({a}, {b}, {acc})" if self.avx else f"{acc} + {a} * {b}"

    def add(self, a: str, b: str) -> str:
        return f"_mm256_add_ps({a}, {b})" if self.avx else f"{a} + {b}"

    def hsum(self, dst: str, src: str, ind: str) -> list[str]:
        if not self.avx:
            return [f"{ind}float {dst} = {src};"]
        return [
            f"{ind}float {dst};",
            f"{ind}{{",
            f"{ind}    __m128 lo = _mm_add_ps(_mm256_castps256_ps128({src}),"
            f" _mm256_extractf128_ps({src}, 1));",
            f"{ind}    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));",
            f"{ind}    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));",
            f"{ind}    {dst} = _mm_cvtss_f32(lo);",
            f"{ind}}}",
        ]


def _full_block(v: _Vec, R: int, K: int, U: int, ind: str) -> list[str]:
    out = []
    for r in range(R):
        out.append(f"{ind}const float* x{r} = inp + (size_t)(bt0 + {r}) * C;")
    for k in range(K):
        out.append(f"{ind}const float* w{k} = weight + (size_t)(o0 + {k}) * C;")
    accs = [f"a{r}_{k}_{u}" for r in range(R) for k in range(K) for u in range(U)]
    out.append(f"{ind}{v.type} " + ", ".join(f"{a} = {v.zero}" for a in accs) + ";")
    out.append(f"{ind}int i = 0;")

    def step(units: int, i1: str) -> list[str]:
        body = []
        for u in range(units):
            off = f"i + {v.width * u}" if u else "i"
            for r in range(R):
                body.append(f"{i1}{v.type} xv{r} = {v.load(f'x{r} + {off}')};")
            for k in range(K):
                body.append(f"{i1}{{ {v.type} wv = {v.load(f'w{k} + {off}')};")
                for r in range(R):
                    acc = f"a{r}_{k}_{u}"
                    body.append(f"{i1}  {acc} = {v.fma(f'xv{r}', 'wv', acc)};")
                body.append(f"{i1}}}")
        return body

    # main loop: U vectors per iteration, each into its own accumulator set
    out.append(f"{ind}for (; i + {v.width * U} <= C; i += {v.width * U}) {{")
    main = []
    for u in range(U):
        off = f"i + {v.width * u}" if u else "i"
        main.append(f"{ind}    {{")
        for r in range(R):
            main.append(f"{ind}        {v.type} xv{r} = {v.load(f'x{r} + {off}')};")
        for k in range(K):
            main.append(f"{ind}        {{ {v.type} wv = {v.load(f'w{k} + {off}')};")
            for r in range(R):
                acc = f"a{r}_{k}_{u}"
                main.append(f"{ind}          {acc} = {v.fma(f'xv{r}', 'wv', acc)};")
            main.append(f"{ind}        }}")
        main.append(f"{ind}    }}")
    out += main
    out.append(f"{ind}}}")
    if U > 1 and v.width > 1:
        out.append(f"{ind}for (; i + {v.width} <= C; i += {v.width}) {{")
        out += step(1, ind + "    ")
        out.append(f"{ind}}}")
    # fold the unrolled accumulator sets, reduce to scalars, scalar tail, store
    for r in range(R):
        for k in range(K):
            for u in range(1, U):
                out.append(f"{ind}a{r}_{k}_0 = {v.add(f'a{r}_{k}_0', f'a{r}_{k}_{u}')};")
            out += v.hsum(f"s{r}_{k}", f"a{r}_{k}_0", ind)
    out.append(f"{ind}for (; i < C; i++) {{")
    for r in range(R):
        for k in range(K):
            out.append(f"{ind}    s{r}_{k} += x{r}[i] * w{k}[i];")
    out.append(f"{ind}}}")
    for r in range(R):
        for k in range(K):
            out.append(f"{ind}out[(size_t)(bt0 + {r}) * OC + o0 + {k}] = "
                       f"s{r}_{k} + (bias != NULL ? bias[o0 + {k}] : 0.0f);")
    return out


def _edge_block(v: _Vec, ind: str) -> list[str]:
    out = [
        f"{ind}for (int r = 0; r < nb; r++) {{",
        f"{ind}    const float* x = inp + (size_t)(bt0 + r) * C;",
        f"{ind}    for (int k = 0; k < no; k++) {{",
        f"{ind}        const float* w = weight + (size_t)(o0 + k) * C;",
        f"{ind}        {v.type} a = {v.zero};",
        f"{ind}        int i = 0;",
    ]
    if v.width > 1:
        out.append(f"{ind}        for (; i + {v.width} <= C; i += {v.width}) "
                   f"a = {v.fma(v.load('x + i'), v.load('w + i'), 'a')};")
    out += v.hsum("s", "a", ind + "        ")
    out += [
        f"{ind}        for (; i < C; i++) s += x[i] * w[i];",
        f"{ind}        out[(size_t)(bt0 + r) * OC + o0 + k] = "
        "s + (bias != NULL ? bias[o0 + k] : 0.0f);",
        f"{ind}    }}",
        f"{ind}}}",
    ]
    return out


def render(knobs: dict[str, Any]) -> str:
    """The candidate source for one knob combination (missing knobs take DEFAULTS)."""
    k = {**DEFAULTS, **knobs}
    unknown = set(k) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knobs: {sorted(unknown)}")
    for name, value in k.items():
        if value not in KNOBS[name]:
            raise ValueError(f"knob {name}={value!r} not in {KNOBS[name]}")
    v = _Vec(k["simd"])
    R, K, U = int(k["bt_block"]), int(k["oc_block"]), int(k["unroll"])
    lines = [f"// tuner: {', '.join(f'{n}={k[n]}' for n in KNOBS)}"]
    if k["opt"] != "O2":
        lines.append(f'#pragma GCC optimize("{k["opt"]}")')
    if v.avx:
        lines.append('#pragma GCC target("avx2,fma")')
    lines.append("#include <stddef.h>")
    if v.avx:
        lines.append("#include <immintrin.h>")
    lines += [
        "",
        "void matmul_forward(float* out, const float* inp, const float* weight, "
        "const float* bias,",
        "                    int B, int T, int C, int OC) {",
        "    const int BT = B * T;",
    ]
    loops = [("bt0", "BT", R), ("o0", "OC", K)]
    if k["loop_order"] == "oc_outer":
        loops.reverse()
    ind = "    "
    for var, bound, step in loops:
        lines.append(f"{ind}for (int {var} = 0; {var} < {bound}; {var} += {step}) {{")
        ind += "    "
    lines += [
        f"{ind}const int nb = BT - bt0 < {R} ? BT - bt0 : {R};",
        f"{ind}const int no = OC - o0 < {K} ? OC - o0 : {K};",
        f"{ind}if (nb == {R} && no == {K}) {{",
    ]
    lines += _full_block(v, R, K, U, ind + "    ")
    lines.append(f"{ind}}} else {{")
    lines += _edge_block(v, ind + "    ")
    lines.append(f"{ind}}}")
    for _ in loops:
        ind = ind[:-4]
        lines.append(f"{ind}}}")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    args = dict(a.split("=", 1) for a in sys.argv[1:])
    typed = {n: (int(x) if x.isdigit() else x) for n, x in args.items()}
    sys.stdout.write(render(typed))
