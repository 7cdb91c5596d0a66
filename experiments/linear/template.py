"""Offline-tuner template: render(knobs) -> a complete, correct matmul_forward source.

Every knob combination declared in experiment.json yields one function (no helpers; all
logic is inline) that handles any B, T, C, OC >= 1, NULL bias and unaligned pointers. The
kernel is a register-blocked dot-product GEMM: a block of `rows` token rows x `cols`
output channels keeps rows*cols vector accumulators along C, so no operand has to be
transposed (both inp and weight are C-contiguous) and small token counts need no packing.
  simd      avx512: 16 floats per vector and 32 registers, in a nested function with its
            own target attribute, called when __builtin_cpu_supports("avx512f"); else an
            AVX2 fallback (the enclosing function is compiled for AVX2 only, so it runs
            on AVX2-only hosts); avx2: 8 floats, 16 registers
  rows      token rows per register block
  cols      output channels per register block (rows*cols accumulators)
  kc        C split into chunks of kc floats (0: whole rows) so a block's rows stay in
            L1 and a chunk of inp in L2; partial sums are added into out
  order     oc_outer keeps a panel of weight rows hot while sweeping all tokens;
            bt_outer sweeps all weights once per block of token rows
  pack      copy the weight panel (cols rows x one chunk) into contiguous malloc'd
            scratch (per call, freed before returning): one stream, no set conflicts
  prefetch  0, or how many floats ahead to prefetch the operand streamed from L2/L3
  large     dot: always the kernel above; outer32/outer16: from BT >= 32 (16) on an outer-product
            kernel: each chunk of inp is packed transposed into aligned malloc'd scratch
            (BT x kc, cheap), and a tile of MR token rows x NR output channels keeps its
            sums in vectors along the tokens, fed by broadcasts of the weights: no
            horizontal sums, and every weight is loaded once per token panel; band16: that
            kernel for 16..31 tokens only (one vector of tokens x NR channels), the dot
            form from 32 on; band16_outer512: band16, and the tile again from 512 tokens,
            where inp no longer stays in L2 for the dot form's panel sweeps
  tile      the outer kernel's tile, "VxNR": V vectors of tokens x NR channels (avx2 uses
            NR/2, for its 16 registers)
Edge rows (BT % rows) use the same kernel one row at a time; OC % cols and C % vector
width fall back to one-output loops and a scalar tail, so nothing reads past a row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

KNOBS: dict[str, list[Any]] = {
    "simd": ["avx512", "avx2"],
    "rows": [1, 2, 4, 6],
    "cols": [2, 3, 4, 6],
    "kc": [0, 256, 512, 1024],
    "order": ["oc_outer", "bt_outer"],
    "pack": [0, 1],
    "prefetch": [0, 256],
    "large": ["dot", "outer32", "outer16", "band16", "band16_outer512"],
    "tile": ["2x12", "1x24", "3x8", "4x6"],
}
DEFAULTS: dict[str, Any] = {"simd": "avx512", "rows": 4, "cols": 6, "kc": 0,
                            "order": "oc_outer", "pack": 0, "prefetch": 0,
                            "large": "outer16", "tile": "2x12"}


def combinations() -> list[dict[str, Any]]:
    keys = list(KNOBS)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*KNOBS.values())]


class _Vec:
    """Spelling of the vector operations for one vector width."""

    def __init__(self, bits: int) -> None:
        self.width = bits // 32
        self.type = f"__m{bits}"
        self.p = "_mm512" if bits == 512 else "_mm256"

    def load(self, ptr: str) -> str:
        return f"{self.p}_loadu_ps({ptr})"

    def fma(self, a: str, b: str, acc: str) -> str:
        return f"{self.p}_fmadd_ps({a}, {b}, {acc})"

    @property
    def zero(self) -> str:
        return f"{self.p}_setzero_ps()"

    def to256(self, a: str) -> str:
        """The sum of a vector's two halves as __m256 (avx512f only: no avx512dq/vl)."""
        if self.width == 8:
            return a
        return (f"_mm256_add_ps(_mm512_castps512_ps256({a}), _mm256_castpd_ps("
                f"_mm512_extractf64x4_pd(_mm512_castps_pd({a}), 1)))")


def _reduce4(v: _Vec, accs: list[str], dst: str, ind: str) -> list[str]:
    """Store the horizontal sums of up to 4 accumulators into dst[0..4) (one __m128)."""
    ys = [v.to256(a) for a in accs] + ["_mm256_setzero_ps()"] * (4 - len(accs))
    return [
        f"{ind}{{",
        f"{ind}    __m256 h0 = _mm256_hadd_ps({ys[0]}, {ys[1]});",
        f"{ind}    __m256 h1 = _mm256_hadd_ps({ys[2]}, {ys[3]});",
        f"{ind}    __m256 h = _mm256_hadd_ps(h0, h1);",
        f"{ind}    _mm_storeu_ps({dst}, _mm_add_ps(_mm256_castps256_ps128(h), "
        "_mm256_extractf128_ps(h, 1)));",
        f"{ind}}}",
    ]


def _store_sums(nr: int, K: int, ind: str) -> list[str]:
    """s[r][k] (+ the scalar tail of C, + bias on the first chunk, + out on later chunks)
    into out, four outputs per 128-bit store where the columns allow."""
    out = [
        f"{ind}if (i < n) {{",
        f"{ind}    for (int r = 0; r < {nr}; r++)",
        f"{ind}        for (int k = 0; k < {K}; k++)",
        f"{ind}            for (int j = i; j < n; j++) s[r][k] += xp[r][j] * wp[k][j];",
        f"{ind}}}",
        f"{ind}for (int r = 0; r < {nr}; r++) {{",
        f"{ind}    float* orow = out + (size_t)(bt0 + r) * OC + o0;",
    ]
    for g in range(0, K - K % 4, 4):
        out += [
            f"{ind}    {{",
            f"{ind}        __m128 add = first ? (bias != NULL ? _mm_loadu_ps(bias + o0 + {g})"
            f" : _mm_setzero_ps()) : _mm_loadu_ps(orow + {g});",
            f"{ind}        _mm_storeu_ps(orow + {g}, _mm_add_ps(_mm_loadu_ps(&s[r][{g}]), add));",
            f"{ind}    }}",
        ]
    for k in range(K - K % 4, K):
        out.append(f"{ind}    orow[{k}] = first ? s[r][{k}] + (bias != NULL ? bias[o0 + {k}] :"
                   f" 0.0f) : orow[{k}] + s[r][{k}];")
    out.append(f"{ind}}}")
    return out


def _fmas(v: _Vec, accs: list[list[str]], w_of: Callable[[int], str], ind: str) -> list[str]:
    """accs[r][k] += x{r} * w(k) for every r and k: one w per k, shared by all the x."""
    out = []
    for k in range(len(accs[0])):
        out.append(f"{ind}{{ {v.type} w = {w_of(k)};")
        for r, row in enumerate(accs):
            out.append(f"{ind}  {row[k]} = {v.fma(f'x{r}', 'w', row[k])};")
        out.append(f"{ind}}}")
    return out


def _block(v: _Vec, nr: int, K: int, prefetch: int, stream: str, ind: str) -> list[str]:
    """One nr x K register block over the chunk [c0, c1): accumulate, reduce, store."""
    W = v.width
    out = [f"{ind}{{"]
    i2 = ind + "    "
    accs = [[f"a{r}_{k}" for k in range(K)] for r in range(nr)]
    out.append(f"{i2}{v.type} " + ", ".join(f"{a} = {v.zero}" for row in accs for a in row)
               + ";")
    out.append(f"{i2}int i = 0;")
    out.append(f"{i2}for (; i + {W} <= n; i += {W}) {{")
    for r in range(nr):
        out.append(f"{i2}    {v.type} x{r} = {v.load(f'xp[{r}] + i')};")
    if prefetch:
        targets = ([f"xp[{r}]" for r in range(nr)] if stream == "x"
                   else [f"wp[{k}]" for k in range(K)])
        for t in targets:
            out.append(f"{i2}    __builtin_prefetch({t} + i + {prefetch});")
    out += _fmas(v, accs, lambda k: v.load(f"wp[{k}] + i"), i2 + "    ")
    out.append(f"{i2}}}")
    k4 = (K + 3) // 4 * 4
    out.append(f"{i2}float s[{nr}][{k4}];")
    for r in range(nr):
        for g in range(0, K, 4):
            out += _reduce4(v, accs[r][g:g + 4], f"&s[{r}][{g}]", i2)
    out += _store_sums(nr, K, i2)
    out.append(f"{ind}}}")
    return out


def _single(v: _Vec, ind: str) -> list[str]:
    """One output at a time (the OC % cols edge): one accumulator, scalar tail."""
    W = v.width
    return [
        f"{ind}for (int r = 0; r < nb; r++) {{",
        f"{ind}    for (int k = 0; k < no; k++) {{",
        f"{ind}        const float* x = xp[r];",
        f"{ind}        const float* w = wp[k];",
        f"{ind}        {v.type} a = {v.zero};",
        f"{ind}        int i = 0;",
        f"{ind}        for (; i + {W} <= n; i += {W})",
        f"{ind}            a = {v.fma(v.load('x + i'), v.load('w + i'), 'a')};",
        f"{ind}        float s4[4];",
        *_reduce4(v, ["a"], "s4", ind + "        "),
        f"{ind}        float t = s4[0];",
        f"{ind}        for (; i < n; i++) t += x[i] * w[i];",
        f"{ind}        float* o = out + (size_t)(bt0 + r) * OC + o0 + k;",
        f"{ind}        *o = first ? t + (bias != NULL ? bias[o0 + k] : 0.0f) : *o + t;",
        f"{ind}    }}",
        f"{ind}}}",
    ]


def _path(v: _Vec, R: int, K: int, kc: int, order: str, pack: bool, prefetch: int,
          ind: str) -> list[str]:
    """The whole computation for one vector width (a brace block of its own)."""
    chunk = f"{kc}" if kc else "C"
    stream = "x" if order == "oc_outer" else "w"
    out = [f"{ind}{{"]
    i1 = ind + "    "
    if pack:
        out.append(f"{i1}float* panel = (float*)malloc(sizeof(float) * (size_t){K} * "
                   f"(size_t)({chunk} < C ? {chunk} : C));")
    out.append(f"{i1}for (int c0 = 0; c0 < C; c0 += {chunk}) {{")
    i2 = i1 + "    "
    out += [f"{i2}const int n = C - c0 < {chunk} ? C - c0 : {chunk};",
            f"{i2}const int first = c0 == 0;"]
    loops = [("bt0", "BT", R), ("o0", "OC", K)]
    if order == "oc_outer":
        loops.reverse()
    ind2 = i2
    for var, bound, step in loops:
        out.append(f"{ind2}for (int {var} = 0; {var} < {bound}; {var} += {step}) {{")
        ind2 += "    "
    out += [
        f"{ind2}const int nb = BT - bt0 < {R} ? BT - bt0 : {R};",
        f"{ind2}const int no = OC - o0 < {K} ? OC - o0 : {K};",
        f"{ind2}const float* xp[{R}];",
        f"{ind2}const float* wp[{K}];",
        f"{ind2}for (int r = 0; r < nb; r++) xp[r] = inp + (size_t)(bt0 + r) * C + c0;",
    ]
    if pack:
        # the panel is re-packed whenever its weight rows change: once per (chunk, o0)
        # with oc_outer (bt0 == 0 starts a new panel), for every block with bt_outer
        fresh = "bt0 == 0" if order == "oc_outer" else "1"
        out += [
            f"{ind2}for (int k = 0; k < no; k++) {{",
            f"{ind2}    const float* src = weight + (size_t)(o0 + k) * C + c0;",
            f"{ind2}    if (panel != NULL) {{",
            f"{ind2}        float* dst = panel + (size_t)k * n;",
            f"{ind2}        if ({fresh}) memcpy(dst, src, sizeof(float) * (size_t)n);",
            f"{ind2}        wp[k] = dst;",
            f"{ind2}    }} else {{",
            f"{ind2}        wp[k] = src;",
            f"{ind2}    }}",
            f"{ind2}}}",
        ]
    else:
        out.append(f"{ind2}for (int k = 0; k < no; k++) "
                   "wp[k] = weight + (size_t)(o0 + k) * C + c0;")
    # a full block, or the edge rows (BT % rows) one at a time with the same columns
    out.append(f"{ind2}if (no == {K} && nb == {R}) {{")
    out += _block(v, R, K, prefetch, stream, ind2 + "    ")
    if R > 1:
        out += [f"{ind2}}} else if (no == {K}) {{",
                f"{ind2}    for (int e = 0; e < nb; e++, bt0++) {{",
                f"{ind2}        xp[0] = xp[e];"]
        out += _block(v, 1, K, prefetch, stream, ind2 + "        ")
        out += [f"{ind2}    }}", f"{ind2}    bt0 -= nb;"]
    out += [f"{ind2}}} else {{"]
    out += _single(v, ind2 + "    ")
    out.append(f"{ind2}}}")
    for _ in loops:
        ind2 = ind2[:-4]
        out.append(f"{ind2}}}")
    out.append(f"{i1}}}")
    if pack:
        out.append(f"{i1}free(panel);")
    out.append(f"{ind}}}")
    return out


STAGE_ABOVE = 12  # the outer kernel stages its weight rows when it has more than this


def _outer(v: _Vec, MV: int, NR: int, kc: int, bts: tuple[int, int], ind: str) -> list[str]:
    """The outer-product form for bts[0] <= BT < bts[1]: a brace block that returns when
    done, and does nothing when the scratch cannot be allocated, so the caller falls
    through to the dot form.

    With more than STAGE_ABOVE rows, every U=16 c-steps the NR weight rows' next 16
    floats are staged in a stack tile (one vector load and store per row), and the
    broadcasts read the tile at constant offsets from one pointer. Broadcasting straight
    from 24 row pointers needs 24 registers for them: gcc spills half and reloads one per
    FMA (36 loads per 24 FMAs instead of 25, ~60% of peak at BT=16), and rows C floats
    apart share L1 sets when C is a multiple of 512 (fcproj, C=3072: 79 -> 106 GFLOPS
    staged, side by side). Up to 12 rows the pointers mostly fit, and the staging's
    stores cost more than they save (12 rows unstaged: 131-136 GFLOPS at BT=16, C=768,
    against 125-128 for 24 staged)."""
    W, MR = v.width, MV * v.width
    # c-steps per unrolled block: the staged form fills a 16-float row per vector load;
    # unstaged, 8 measured as fast as 16 (4 lost 12% at 16 tokens) and the sanitizer
    # build, which checks every pointer step, compiles in less time
    U = 16 if NR > STAGE_ABOVE else 8
    chunk = f"({kc} < C ? {kc} : C)" if kc else "C"
    lo, hi = bts
    ind0, ind = ind, ind + "    "
    i1, i2, i3, i4, i5 = (ind + "    " * d for d in range(1, 6))
    out = [
        f"{ind0}{{",
        f"{ind}const int kcs = {chunk};",
        f"{ind}const int npan = (BT + {MR - 1}) / {MR};",
        # 64-byte aligned, so no load splits a line (C11 wants the size a multiple of it)
        f"{ind}float* xt = BT >= {lo} && BT < {hi} ? (float*)aligned_alloc(64, "
        f"(sizeof(float) * (size_t)npan * {MR} * (size_t)kcs + 63) / 64 * 64) : NULL;",
        f"{ind}if (xt != NULL) {{",
        *([f"{i1}float tile[{NR}][{U}] __attribute__((aligned(64)));",
           f"{i1}const size_t opaque = (size_t)(C < 0) * 64; /* 0: C >= 1 */"]
          if NR > STAGE_ABOVE else []),
        f"{i1}for (int c0 = 0; c0 < C; c0 += kcs) {{",
        f"{i2}const int n = C - c0 < kcs ? C - c0 : kcs;",
        f"{i2}const int first = c0 == 0;",
        # pack: xt[p][i][m] = inp[p*MR + m][c0 + i], zero rows past BT; 64 c-values at a
        # time, so the lines written stay in L1 while every token row fills its column
        # (a whole column at a time wrote across all n lines, 16 times: ~10 us at C=768)
        f"{i2}for (int p = 0; p < npan; p++) {{",
        f"{i3}float* dst = xt + (size_t)p * {MR} * n;",
        *(_pack16(MR, i3) if W == 16 else [
            f"{i3}for (int i0 = 0; i0 < n; i0 += 64) {{",
            f"{i3}const int i1 = n - i0 < 64 ? n : i0 + 64;",
            f"{i3}for (int m = 0; m < {MR}; m++) {{",
            f"{i4}const int bt = p * {MR} + m;",
            f"{i4}if (bt < BT) {{",
            f"{i4}    const float* src = inp + (size_t)bt * C + c0;",
            f"{i4}    for (int i = i0; i < i1; i++) dst[(size_t)i * {MR} + m] = src[i];",
            f"{i4}}} else {{",
            f"{i4}    for (int i = i0; i < i1; i++) dst[(size_t)i * {MR} + m] = 0.0f;",
            f"{i4}}}",
            f"{i3}}}",
            f"{i3}}}"]),
        f"{i2}}}",
        # a block of 16*NR weight rows x kc stays in L2 while every token panel sweeps it
        f"{i2}for (int ob = 0; ob < OC; ob += {16 * NR}) {{",
        f"{i2}const int oe = OC - ob < {16 * NR} ? OC : ob + {16 * NR};",
        f"{i2}for (int p = 0; p < npan; p++) {{",
        f"{i3}const float* xp = xt + (size_t)p * {MR} * n;",
        f"{i2}for (int o0 = ob; o0 < oe; o0 += {NR}) {{",
        f"{i3}const int no = oe - o0 < {NR} ? oe - o0 : {NR};",
    ]
    for k in range(NR):
        row = f"weight + (size_t)(o0 + {k}) * C + c0"
        out.append(f"{i3}const float* w{k} = {k} < no ? {row} : weight + (size_t)o0 * C + c0;"
                   if k else f"{i3}const float* w0 = {row};")
    out.append(f"{i3}{{")
    accs = [[f"a{m}_{k}" for k in range(NR)] for m in range(MV)]
    for k in range(NR):
        init = (f"first ? {v.p}_set1_ps((bias != NULL && {k} < no) ? bias[o0 + {k}] : 0.0f)"
                f" : {v.zero}")
        out.append(f"{i4}{v.type} " + ", ".join(f"{accs[m][k]} = {init}" for m in range(MV))
                   + ";")

    def step(i: str, at: Callable[[int], str], ind_: str) -> list[str]:
        """One c step: MV token vectors x NR broadcast weights (weight k at at(k))."""
        lines = [f"{ind_}{{"]
        for m in range(MV):
            off = f" + {m * W}" if m else ""
            lines.append(f"{ind_}    {v.type} x{m} = {v.load(f'{i}{off}')};")
        lines += _fmas(v, accs, lambda k: f"{v.p}_set1_ps({at(k)})", ind_ + "    ")
        return lines + [f"{ind_}}}"]

    out.append(f"{i4}int i = 0;")
    out.append(f"{i4}for (; i + {U} <= n; i += {U}) {{")
    out.append(f"{i5}const float* xq = xp + (size_t)i * {MR};")
    if NR > STAGE_ABOVE:
        for k in range(NR):
            for j in range(0, U, W):
                out.append(f"{i5}{v.p}_store_ps(&tile[{k}][{j}], {v.load(f'w{k} + {j}')});")
        # through an offset gcc cannot prove is zero: else it forwards the stores above
        # into the broadcasts as lane extracts, on the shuffle port the FMAs need
        out.append(f"{i5}const float* tp = (const float*)((const char*)&tile[0][0] + opaque);")
        for u in range(U):
            out += step(f"xq + {u * MR}", lambda k, u=u: f"tp[{k * U + u}]", i5)
    else:
        for u in range(U):
            out += step(f"xq + {u * MR}", lambda k, u=u: f"w{k}[{u}]", i5)
    out.append(f"{i5}" + " ".join(f"w{k} += {U};" for k in range(NR)))
    out.append(f"{i4}}}")
    out.append(f"{i4}for (; i < n; i++) {{")
    out.append(f"{i5}const float* xq = xp + (size_t)i * {MR};")
    out += step("xq", lambda k: f"*w{k}", i5)
    out.append(f"{i5}" + " ".join(f"w{k}++;" for k in range(NR)))
    out.append(f"{i4}}}")
    out += [f"{i4}const int nb = BT - p * {MR} < {MR} ? BT - p * {MR} : {MR};"]
    if W == 16:
        out += _transpose_store(accs, MR, NR, i4)
    else:
        out += [f"{i4}float t[{NR}][{MR}];"]
        for k in range(NR):
            for m in range(MV):
                out.append(f"{i4}{v.p}_storeu_ps(&t[{k}][{m * W}], {accs[m][k]});")
        out += [
            f"{i4}for (int m = 0; m < nb; m++) {{",
            f"{i4}    float* orow = out + (size_t)(p * {MR} + m) * OC + o0;",
            f"{i4}    if (first) {{",
            f"{i4}        for (int k = 0; k < no; k++) orow[k] = t[k][m];",
            f"{i4}    }} else {{",
            f"{i4}        for (int k = 0; k < no; k++) orow[k] += t[k][m];",
            f"{i4}    }}",
            f"{i4}}}",
        ]
    out += [
        f"{i3}}}",
        f"{i2}}}",
        f"{i2}}}",
        f"{i2}}}",
        f"{i1}}}",
        f"{i1}free(xt);",
        f"{i1}return;",
        f"{ind}}}",
        f"{ind0}}}",
    ]
    return out


def _transpose16(r: list[str], ind: str) -> tuple[list[str], list[str]]:
    """A 16x16 transpose of the vectors r (AVX-512, 64 shuffles): the lines, and the 16
    result vectors' names (result q holds element q of every r). Names are local: the
    caller puts the lines in a brace block of their own."""
    out = []
    for i in range(8):  # t[2i], t[2i+1]: rows 2i, 2i+1 interleaved
        out.append(f"{ind}__m512 t{2 * i} = _mm512_unpacklo_ps({r[2 * i]}, {r[2 * i + 1]}),"
                   f" t{2 * i + 1} = _mm512_unpackhi_ps({r[2 * i]}, {r[2 * i + 1]});")
    for q in range(4):  # u[4q + j]: column 4L + j of rows 4q..4q+3, in lane L
        a, b = f"t{4 * q}", f"t{4 * q + 2}"
        c, d = f"t{4 * q + 1}", f"t{4 * q + 3}"
        out.append(f"{ind}__m512 u{4 * q} = _mm512_shuffle_ps({a}, {b}, 0x44), "
                   f"u{4 * q + 1} = _mm512_shuffle_ps({a}, {b}, 0xEE), "
                   f"u{4 * q + 2} = _mm512_shuffle_ps({c}, {d}, 0x44), "
                   f"u{4 * q + 3} = _mm512_shuffle_ps({c}, {d}, 0xEE);")
    cols = [""] * 16
    for j in range(4):
        out.append(f"{ind}__m512 vl{j} = _mm512_shuffle_f32x4(u{j}, u{4 + j}, 0x88), "
                   f"vh{j} = _mm512_shuffle_f32x4(u{j}, u{4 + j}, 0xDD), "
                   f"wl{j} = _mm512_shuffle_f32x4(u{8 + j}, u{12 + j}, 0x88), "
                   f"wh{j} = _mm512_shuffle_f32x4(u{8 + j}, u{12 + j}, 0xDD);")
        for lane, (x, y, imm) in enumerate([("vl", "wl", "0x88"), ("vh", "wh", "0x88"),
                                            ("vl", "wl", "0xDD"), ("vh", "wh", "0xDD")]):
            cols[4 * lane + j] = name = f"c{4 * lane + j}"
            out.append(f"{ind}__m512 {name} = _mm512_shuffle_f32x4({x}{j}, {y}{j}, {imm});")
    return out, cols


def _pack16(MR: int, ind: str) -> list[str]:
    """AVX-512 packing of one panel's chunk: 16 token rows x 16 c-values at a time,
    transposed in registers and stored as 16 aligned vectors (the scalar copy took ~1
    cycle per float: ~80 us of a 2.1 ms call at 256 tokens); the C % 16 tail is scalar.
    Token rows past BT are zeros."""
    i1, i2 = ind + "    ", ind + "        "
    out = [f"{ind}for (int g = 0; g < {MR}; g += 16) {{",
           f"{i1}const int t0 = p * {MR} + g;",
           f"{i1}const int nt = BT - t0 < 16 ? (BT - t0 > 0 ? BT - t0 : 0) : 16;",
           f"{i1}int i = 0;",
           f"{i1}for (; i + 16 <= n; i += 16) {{"]
    rows = []
    for j in range(16):
        out.append(f"{i2}const __m512 r{j} = {j} < nt ? _mm512_loadu_ps(inp + (size_t)(t0 + {j})"
                   f" * C + c0 + i) : _mm512_setzero_ps();")
        rows.append(f"r{j}")
    net, cols = _transpose16(rows, i2)
    out += net
    for q in range(16):
        out.append(f"{i2}_mm512_store_ps(dst + (size_t)(i + {q}) * {MR} + g, {cols[q]});")
    out += [f"{i1}}}",
            f"{i1}for (; i < n; i++)",
            f"{i1}    for (int m = 0; m < 16; m++)",
            f"{i1}        dst[(size_t)i * {MR} + g + m] = m < nt ? "
            "inp[(size_t)(t0 + m) * C + c0 + i] : 0.0f;",
            f"{ind}}}"]
    return out


def _transpose_store(accs: list[list[str]], MR: int, NR: int, ind: str) -> list[str]:
    """AVX-512: write a tile's sums (vectors along the tokens) into out's rows (along the
    channels) through 16x16 in-register transposes, one masked store per token row and
    group of 16 channels. Through a scalar scratch copy it was 3 memory operations per
    sum; this is 64 shuffles per 16x16 block."""
    out: list[str] = []
    for m, row in enumerate(accs):
        for g in range(0, NR, 16):
            r = [row[g + i] if g + i < NR else "_mm512_setzero_ps()" for i in range(16)]
            out.append(f"{ind}{{")
            i1 = ind + "    "
            net, cols = _transpose16(r, i1)
            out += net
            out += [f"{i1}const int ng = no - {g};",
                    f"{i1}const __mmask16 mk = ng >= 16 ? (__mmask16)0xFFFF : "
                    "(__mmask16)((1u << (ng > 0 ? ng : 0)) - 1);",
                    f"{i1}if (mk) {{"]
            for c in range(16):
                tok = m * 16 + c
                out += [f"{i1}    if ({tok} < nb) {{",
                        f"{i1}        float* orow = out + (size_t)(p * {MR} + {tok}) * OC"
                        f" + o0 + {g};",
                        f"{i1}        _mm512_mask_storeu_ps(orow, mk, first ? {cols[c]} : "
                        f"_mm512_add_ps({cols[c]}, _mm512_maskz_loadu_ps(mk, orow)));",
                        f"{i1}    }}"]
            out += [f"{i1}}}", f"{ind}}}"]
    return out


def _outers(v: _Vec, MV: int, NR: int, kc: int, large: str, ind: str) -> list[str]:
    """outer32: the tile from 32 tokens on; outer16 adds a one-vector-tall tile (1 x NR)
    for 16..31 tokens, where a taller tile would be half padding; band16 is that
    one-vector tile alone, band16_outer512 adds the tile from 512 tokens on. 1 x NR, not
    1 x MV*NR: at 16 tokens 12 rows unstaged measured 131-140 GFLOPS against 125-128 for
    24 staged, and 119-126 for 14 staged, 123-135 for 10 (1x24 keeps the staged form)."""
    out = []
    if large in ("outer32", "outer16"):
        out += _outer(v, MV, NR, kc, (32, 1 << 30), ind)
    if large == "band16_outer512":
        out += _outer(v, MV, NR, kc, (512, 1 << 30), ind)
    if large != "dot" and large != "outer32":
        out += _outer(v, 1, NR, kc, (16, 32), ind)
    return out


# A small problem (weights and inp within 32 KiB) is over before the hardware prefetcher
# ramps up, and its operands come from L3 (the harness gives every call fresh buffers):
# asking for every line at entry puts all of their latencies in flight at once.
# small_nobias: 1.41-1.44 us -> 1.19-1.20 us, measured side by side in one run.
SMALL_PREFETCH = [
    "    if (((size_t)OC + (size_t)BT) * (size_t)C <= 8192) {",
    "        for (size_t k = 0; k < (size_t)OC * C; k += 16) __builtin_prefetch(weight + k, 0, 3);",
    "        for (size_t k = 0; k < (size_t)BT * C; k += 16) __builtin_prefetch(inp + k, 0, 3);",
    "    }",
]


def render(knobs: dict[str, Any]) -> str:
    """The candidate source for one knob combination (missing knobs take DEFAULTS)."""
    k = {**DEFAULTS, **knobs}
    unknown = set(k) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knobs: {sorted(unknown)}")
    for name, value in k.items():
        if value not in KNOBS[name]:
            raise ValueError(f"knob {name}={value!r} not in {KNOBS[name]}")
    R, K, kc = int(k["rows"]), int(k["cols"]), int(k["kc"])
    pack, prefetch = bool(k["pack"]), int(k["prefetch"])
    avx512 = k["simd"] == "avx512"
    MV, NR = (int(x) for x in str(k["tile"]).split("x"))
    lines = [f"// tuner: {', '.join(f'{n}={k[n]}' for n in KNOBS)}",
             '#pragma GCC optimize("O3")',
             '#pragma GCC target("avx2,fma")',
             "#include <stddef.h>", "#include <stdlib.h>", "#include <string.h>",
             "#include <immintrin.h>", "",
             "void matmul_forward(float* out, const float* inp, const float* weight, "
             "const float* bias,",
             "                    int B, int T, int C, int OC) {"]
    if avx512:
        # A nested function of its own target: only it may use AVX-512 registers and
        # encodings (with the whole function compiled for avx512f, gcc spills into
        # xmm16-31 on the AVX2 path too). It uses no outer locals: no trampoline.
        lines += ['    __attribute__((target("avx512f,avx2,fma"))) void wide(',
                  "            float* out, const float* inp, const float* weight, "
                  "const float* bias, int BT, int C, int OC) {"]
        lines += _outers(_Vec(512), MV, NR, kc, k["large"], "        ")
        lines += _path(_Vec(512), R, K, kc, k["order"], pack, prefetch, "        ")
        lines += ["    }", "    const int BT = B * T;", *SMALL_PREFETCH,
                  '    if (__builtin_cpu_supports("avx512f")) {',
                  "        wide(out, inp, weight, bias, BT, C, OC);",
                  "        return;",
                  "    }"]
        # the fallback for AVX2-only hosts: correct, not tuned
        lines += _path(_Vec(256), 1, 4, 0, "oc_outer", False, 0, "    ")
    else:
        lines += ["    const int BT = B * T;", *SMALL_PREFETCH]
        lines += _outers(_Vec(256), MV, max(1, NR // 2), kc, k["large"], "    ")
        lines += _path(_Vec(256), R, K, kc, k["order"], pack, prefetch, "    ")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    args = dict(a.split("=", 1) for a in sys.argv[1:])
    typed = {n: (int(x) if x.isdigit() else x) for n, x in args.items()}
    sys.stdout.write(render(typed))
