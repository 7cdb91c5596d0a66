"""Tuner template: render(knobs) -> a complete, correct attention candidate for any knob mix.

The offline tuner (`--model tuner`) searches the knob space declared in experiment.json and
sends every rendering through the same pipeline as a model's proposal. Every combination
is a correct kernel for every shape the contract allows (any D, T != S, masks, GQA); the
knobs only change speed:

  simd         scalar (plain C, SSE auto-vectorisation at most) | avx2 (AVX2/FMA intrinsics
               via `#pragma GCC target`, polynomial exp, scalar tails for any D)
  softmax      two_pass (scores row for the whole key range, then exp, then P.V) |
               online (one pass over key blocks with a running max and rescaling)
  query_block  query rows computed together, so each loaded K/V value feeds more FMAs
  key_block    keys per score tile (register tile width; multiple of 8)
  opt          O2 | O3 (`#pragma GCC optimize`)

Shared by all: each kv head's K is transposed once into a [D][keys] scratch (so Q.K^T
vectorises over keys with no horizontal sums) and reused by the whole query-head group, and
key blocks in the causal future of a query block are skipped.
"""

from __future__ import annotations

from itertools import product
from typing import Any

KNOBS: dict[str, list[Any]] = {
    "simd": ["scalar", "avx2"],
    "softmax": ["two_pass", "online"],
    "query_block": [1, 2, 4],
    "key_block": [8, 16, 32],
    "opt": ["O2", "O3"],
}
DEFAULTS: dict[str, Any] = {"simd": "avx2", "softmax": "online", "query_block": 4,
                            "key_block": 16, "opt": "O3"}


def combinations() -> list[dict[str, Any]]:
    """Every knob combination, in a stable order."""
    keys = list(KNOBS)
    return [dict(zip(keys, values, strict=True)) for values in product(*KNOBS.values())]


def _check(knobs: dict[str, Any]) -> dict[str, Any]:
    full = {**DEFAULTS, **knobs}
    for name, value in full.items():
        if name not in KNOBS or value not in KNOBS[name]:
            raise ValueError(f"unknown knob {name}={value!r}; choices: {KNOBS.get(name)}")
    return full


# ---------------------------------------------------------------- AVX2 building blocks

def _vexp(dst: str, src: str) -> str:
    """C statements: dst = exp(src) for one __m256 (Cephes polynomial, ~2 ulp).

    Inputs below -88.4 (including -inf) give exactly 0, which is how masked scores vanish.
    """
    return f"""{{
                __m256 x_ = _mm256_min_ps({src}, _mm256_set1_ps(88.3762626647949f));
                x_ = _mm256_max_ps(x_, _mm256_set1_ps(-88.3762626647949f));
                __m256 fx_ = _mm256_fmadd_ps(x_, _mm256_set1_ps(1.44269504088896341f),
                                             _mm256_set1_ps(0.5f));
                fx_ = _mm256_floor_ps(fx_);
                x_ = _mm256_fnmadd_ps(fx_, _mm256_set1_ps(0.693359375f), x_);
                x_ = _mm256_fnmadd_ps(fx_, _mm256_set1_ps(-2.12194440e-4f), x_);
                __m256 y_ = _mm256_set1_ps(1.9875691500e-4f);
                y_ = _mm256_fmadd_ps(y_, x_, _mm256_set1_ps(1.3981999507e-3f));
                y_ = _mm256_fmadd_ps(y_, x_, _mm256_set1_ps(8.3334519073e-3f));
                y_ = _mm256_fmadd_ps(y_, x_, _mm256_set1_ps(4.1665795894e-2f));
                y_ = _mm256_fmadd_ps(y_, x_, _mm256_set1_ps(1.6666665459e-1f));
                y_ = _mm256_fmadd_ps(y_, x_, _mm256_set1_ps(5.0000001201e-1f));
                __m256 x1_ = _mm256_add_ps(x_, _mm256_set1_ps(1.0f));
                y_ = _mm256_fmadd_ps(y_, _mm256_mul_ps(x_, x_), x1_);
                __m256i n_ = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx_),
                                                                _mm256_set1_epi32(127)), 23);
                {dst} = _mm256_mul_ps(y_, _mm256_castsi256_ps(n_));
            }}"""


def _hreduce(op: str, vec: str) -> str:
    """C expression: horizontal max/add of a __m256 as a float."""
    return (f"({{ __m128 h_ = _mm_{op}_ps(_mm256_castps256_ps128({vec}), "
            f"_mm256_extractf128_ps({vec}, 1)); h_ = _mm_{op}_ps(h_, _mm_movehl_ps(h_, h_)); "
            f"h_ = _mm_{op}_ss(h_, _mm_shuffle_ps(h_, h_, 1)); _mm_cvtss_f32(h_); }})")


def _score_tile(simd: str, base: str) -> str:
    """Scores of QB query rows x KB keys starting at key j0, scaled, stored at sc + base."""
    if simd == "avx2":
        return f"""{{
                __m256 s_[QB][KB / 8];
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    #pragma GCC unroll 8
                    for (int c = 0; c < KB / 8; c++)
                        s_[r][c] = _mm256_setzero_ps();
                for (int d = 0; d < D; d++) {{
                    const float *kd = kt + (size_t)d * SP + j0;
                    __m256 kv_[KB / 8];
                    #pragma GCC unroll 8
                    for (int c = 0; c < KB / 8; c++)
                        kv_[c] = _mm256_loadu_ps(kd + 8 * c);
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
                        __m256 qv_ = _mm256_broadcast_ss(qr[r] + d);
                        #pragma GCC unroll 8
                        for (int c = 0; c < KB / 8; c++)
                            s_[r][c] = _mm256_fmadd_ps(qv_, kv_[c], s_[r][c]);
                    }}
                }}
                const __m256 vscale_ = _mm256_set1_ps(scale);
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    #pragma GCC unroll 8
                    for (int c = 0; c < KB / 8; c++)
                        _mm256_storeu_ps(sc + (size_t)r * SC + {base} + 8 * c,
                                         _mm256_mul_ps(s_[r][c], vscale_));
            }}"""
    return f"""{{
                float s_[QB][KB];
                for (int r = 0; r < QB; r++)
                    for (int c = 0; c < KB; c++)
                        s_[r][c] = 0.0f;
                for (int d = 0; d < D; d++) {{
                    const float *kd = kt + (size_t)d * SP + j0;
                    for (int r = 0; r < QB; r++) {{
                        float qd = qr[r][d];
                        for (int c = 0; c < KB; c++)
                            s_[r][c] += qd * kd[c];
                    }}
                }}
                for (int r = 0; r < QB; r++)
                    for (int c = 0; c < KB; c++)
                        sc[(size_t)r * SC + {base} + c] = s_[r][c] * scale;
            }}"""


def _mask_tile(base: str) -> str:
    """Hidden keys (causal future, explicit mask, padding past S) become -inf."""
    return f"""if (mask != NULL || j0 + KB > jmin) {{
                for (int r = 0; r < QB; r++) {{
                    float *row = sc + (size_t)r * SC + {base};
                    for (int c = 0; c < KB; c++) {{
                        int j = j0 + c;
                        if (j >= lim[r] || (mask != NULL && !mr[r][j]))
                            row[c] = -INFINITY;
                    }}
                }}
            }}"""


def _row_max(simd: str, ptr: str, n: str) -> str:
    """C statements computing float `mx_` = max of ptr[0..n) (n a multiple of 8)."""
    if simd == "avx2":
        return f"""__m256 vm_ = _mm256_set1_ps(-INFINITY);
                for (int c = 0; c < {n}; c += 8)
                    vm_ = _mm256_max_ps(vm_, _mm256_loadu_ps({ptr} + c));
                float mx_ = {_hreduce("max", "vm_")};"""
    return f"""float mx_ = -INFINITY;
                for (int c = 0; c < {n}; c++)
                    mx_ = {ptr}[c] > mx_ ? {ptr}[c] : mx_;"""


def _exp_row(simd: str, ptr: str, n: str, ref: str) -> str:
    """C statements: ptr[c] = exp(ptr[c] - ref) in place for c < n; float `sum_` = total."""
    if simd == "avx2":
        return f"""__m256 vs_ = _mm256_setzero_ps();
                const __m256 vr_ = _mm256_set1_ps({ref});
                for (int c = 0; c < {n}; c += 8) {{
                    __m256 e_;
                    {_vexp("e_", f"_mm256_sub_ps(_mm256_loadu_ps({ptr} + c), vr_)")}
                    _mm256_storeu_ps({ptr} + c, e_);
                    vs_ = _mm256_add_ps(vs_, e_);
                }}
                float sum_ = {_hreduce("add", "vs_")};"""
    return f"""float sum_ = 0.0f;
                for (int c = 0; c < {n}; c++) {{
                    float e_ = expf({ptr}[c] - {ref});
                    {ptr}[c] = e_;
                    sum_ += e_;
                }}"""


def _pv(simd: str, online: bool, jcount: str, prow: str) -> str:
    """acc rows (online: scratch accumulators, rescaled by corr) += P . V over jcount keys.

    Two-pass writes out rows directly, scaled by inv. Any D: 16- and 8-wide vector blocks,
    then a scalar tail.
    """
    def load_init(w: int) -> str:
        if online:
            return f"_mm256_mul_ps(_mm256_loadu_ps(acc + (size_t)r * DP + d0 + {8 * w}), vcorr_[r])"
        return "_mm256_setzero_ps()"

    def store(w: int, a: str) -> str:
        if online:
            return f"_mm256_storeu_ps(acc + (size_t)r * DP + d0 + {8 * w}, {a});"
        return (f"if (r < nq) _mm256_storeu_ps(oh + (size_t)(i0 + r) * D + d0 + {8 * w}, "
                f"_mm256_mul_ps({a}, vinv_[r]));")

    if online:
        scalar_init = "acc[(size_t)r * DP + d0] * corr[r]"
        scalar_store = "acc[(size_t)r * DP + d0] = a_[r];"
    else:
        scalar_init = "0.0f"
        scalar_store = "if (r < nq) oh[(size_t)(i0 + r) * D + d0] = a_[r] * inv[r];"
    if simd != "avx2":
        return f"""for (int d0 = 0; d0 < D; d0++) {{
                    float a_[QB];
                    for (int r = 0; r < QB; r++)
                        a_[r] = {scalar_init};
                    for (int c = 0; c < {jcount}; c++) {{
                        float vv_ = vrow[(size_t)c * D + d0];
                        for (int r = 0; r < QB; r++)
                            a_[r] += {prow}[(size_t)r * SC + c] * vv_;
                    }}
                    for (int r = 0; r < QB; r++)
                        {scalar_store}
                }}"""
    if online:
        scale_vecs = """__m256 vcorr_[QB];
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    vcorr_[r] = _mm256_set1_ps(corr[r]);"""
    else:
        scale_vecs = """__m256 vinv_[QB];
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    vinv_[r] = _mm256_set1_ps(inv[r]);"""
    blocks = []
    for width in (2, 1):
        inits = "\n".join(f"                        a_[r][{w}] = {load_init(w)};"
                          for w in range(width))
        fmas = "\n".join(
            f"                            a_[r][{w}] = _mm256_fmadd_ps(p_, vv_[{w}], a_[r][{w}]);"
            for w in range(width))
        loads = "\n".join(
            f"                        vv_[{w}] = _mm256_loadu_ps(vrow + (size_t)c * D + d0"
            f" + {8 * w});" for w in range(width))
        stores = "\n".join(f"                        {store(w, f'a_[r][{w}]')}"
                           for w in range(width))
        blocks.append(f"""for (; d0 + {8 * width} <= D; d0 += {8 * width}) {{
                    __m256 a_[QB][{width}];
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
{inits}
                    }}
                    for (int c = 0; c < {jcount}; c++) {{
                        __m256 vv_[{width}];
{loads}
                        #pragma GCC unroll 8
                        for (int r = 0; r < QB; r++) {{
                            __m256 p_ = _mm256_broadcast_ss({prow} + (size_t)r * SC + c);
{fmas}
                        }}
                    }}
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
{stores}
                    }}
                }}""")
    return f"""{{
                {scale_vecs}
                int d0 = 0;
                {blocks[0]}
                {blocks[1]}
                for (; d0 < D; d0++) {{
                    float a_[QB];
                    for (int r = 0; r < QB; r++)
                        a_[r] = {scalar_init};
                    for (int c = 0; c < {jcount}; c++) {{
                        float vv_ = vrow[(size_t)c * D + d0];
                        for (int r = 0; r < QB; r++)
                            a_[r] += {prow}[(size_t)r * SC + c] * vv_;
                    }}
                    for (int r = 0; r < QB; r++)
                        {scalar_store}
                }}
            }}"""


def _two_pass(simd: str) -> str:
    return f"""float inv[QB];
            int jn = (jend + KB - 1) / KB * KB; /* keys covered by whole tiles */
            for (int j0 = 0; j0 < jend; j0 += KB) {{
                {_score_tile(simd, "j0")}
                {_mask_tile("j0")}
            }}
            for (int r = 0; r < QB; r++) {{
                float *row = sc + (size_t)r * SC;
                {_row_max(simd, "row", "jn")}
                float ref_ = mx_ == -INFINITY ? 0.0f : mx_; /* fully hidden row: all p = 0 */
                {_exp_row(simd, "row", "jn", "ref_")}
                inv[r] = sum_ > 0.0f ? 1.0f / sum_ : 0.0f;
            }}
            {{
                const float *vrow = vh;
                {_pv(simd, False, "jend", "sc")}
            }}"""


def _online(simd: str) -> str:
    return f"""float m[QB], l[QB], corr[QB];
            for (int r = 0; r < QB; r++) {{
                m[r] = -INFINITY;
                l[r] = 0.0f;
                memset(acc + (size_t)r * DP, 0, sizeof(float) * (size_t)DP);
            }}
            for (int j0 = 0; j0 < jend; j0 += KB) {{
                {_score_tile(simd, "0")}
                {_mask_tile("0")}
                for (int r = 0; r < QB; r++) {{
                    float *row = sc + (size_t)r * SC;
                    {_row_max(simd, "row", "KB")}
                    float mn_ = mx_ > m[r] ? mx_ : m[r];
                    float ref_ = mn_ == -INFINITY ? 0.0f : mn_;
                    corr[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - ref_);
                    {_exp_row(simd, "row", "KB", "ref_")}
                    l[r] = l[r] * corr[r] + sum_;
                    m[r] = mn_;
                }}
                int jb = jend - j0 < KB ? jend - j0 : KB; /* keys in this tile that exist */
                const float *vrow = vh + (size_t)j0 * D;
                {_pv(simd, True, "jb", "sc")}
            }}
            for (int r = 0; r < nq; r++) {{
                float iv_ = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                float *o_ = oh + (size_t)(i0 + r) * D;
                const float *a_ = acc + (size_t)r * DP;
                for (int d = 0; d < D; d++)
                    o_[d] = a_[d] * iv_;
            }}"""


def render(knobs: dict[str, Any]) -> str:
    """A complete candidate.c for this knob combination."""
    k = _check(knobs)
    simd, online = k["simd"], k["softmax"] == "online"
    qb, kb = int(k["query_block"]), int(k["key_block"])
    head = [f'#pragma GCC optimize("{k["opt"]}")']
    if simd == "avx2":
        head.append('#pragma GCC target("avx2,fma")')
    head += ["#include <math.h>", "#include <stdlib.h>", "#include <string.h>"]
    if simd == "avx2":
        head.append("#include <immintrin.h>")
    body = _online(simd) if online else _two_pass(simd)
    note = (f"/* tuner: simd={simd} softmax={k['softmax']} query_block={qb} key_block={kb} "
            f"opt={k['opt']} */")
    return "\n".join([note, *head, ""]) + f"""
void attention(const float *q, const float *k, const float *v, float *out,
               const unsigned char *mask, int batch, int heads, int kv_heads,
               int t_len, int s_len, int head_dim, float scale, int causal)
{{
    enum {{ QB = {qb}, KB = {kb} }};
    const int D = head_dim, S = s_len, T = t_len;
    const int SP = (S + KB - 1) / KB * KB; /* keys padded to whole tiles */
    const int DP = (D + 7) / 8 * 8;
    const int SC = {"KB" if online else "SP"}; /* score row stride in scratch */
    const int group = heads / kv_heads;
    const int shift = S - T; /* causal: query i sees keys j <= i + shift */
    size_t need = (size_t)D * SP + (size_t)QB * SC + (size_t)QB * DP;
    float *kt = malloc(sizeof(float) * need);
    if (kt == NULL)
        return;
    float *sc = kt + (size_t)D * SP;
    float *acc = sc + (size_t)QB * SC;
    (void)acc;
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < kv_heads; g++) {{
            const float *kh = k + (size_t)(b * kv_heads + g) * S * D;
            const float *vh = v + (size_t)(b * kv_heads + g) * S * D;
            /* K^T once per kv head, shared by the query-head group; zero padding */
            for (int j = 0; j < SP; j++)
                for (int d = 0; d < D; d++)
                    kt[(size_t)d * SP + j] = j < S ? kh[(size_t)j * D + d] : 0.0f;
            for (int hh = 0; hh < group; hh++) {{
                int h = g * group + hh;
                const float *qh = q + (size_t)(b * heads + h) * T * D;
                float *oh = out + (size_t)(b * heads + h) * T * D;
                for (int i0 = 0; i0 < T; i0 += QB) {{
            int nq = T - i0 < QB ? T - i0 : QB;
            const float *qr[QB];
            const unsigned char *mr[QB];
            int lim[QB]; /* keys [0, lim) may be visible to row r */
            for (int r = 0; r < QB; r++) {{
                int i = i0 + (r < nq ? r : nq - 1); /* spare rows repeat the last real one */
                qr[r] = qh + (size_t)i * D;
                mr[r] = mask != NULL ? mask + (size_t)i * S : NULL;
                int lr = causal ? i + shift + 1 : S;
                lim[r] = lr < 0 ? 0 : lr > S ? S : lr;
            }}
            int jend = lim[QB - 1], jmin = lim[0];
            if (jend == 0) {{ /* nothing visible for any row of this block */
                for (int r = 0; r < nq; r++)
                    memset(oh + (size_t)(i0 + r) * D, 0, sizeof(float) * (size_t)D);
                continue;
            }}
            {body}
                }}
            }}
        }}
    free(kt);
}}
"""
