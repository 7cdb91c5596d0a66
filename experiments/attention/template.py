"""Tuner template: render(knobs) -> a complete, correct attention candidate for any knob mix.

The offline tuner (`--model tuner`) searches the knob space declared in experiment.json and
sends every rendering through the same pipeline as a model's proposal. Every combination
is a correct kernel for every shape the contract allows (any D, T != S, masks, GQA); the
knobs only change speed:

  simd         scalar (plain C) | avx2 (AVX2/FMA, 8 lanes) | avx512 (AVX-512F, 16 lanes,
               32 registers; chosen at run time only when the OS has enabled the AVX-512
               register state, read with XGETBV, otherwise the same kernel in AVX2 runs: an
               AVX2-only host never executes an AVX-512 instruction)
  softmax      two_pass (a scores row over the whole key range, then exp, then P.V with the
               output in registers) | online (FlashAttention style: one pass over key blocks,
               running max and sum per row, the accumulator rescaled when the max grows)
  query_block  query rows computed together, so each loaded K/V value feeds more FMAs
  key_block    keys per score tile (register tile width)
  rows         head (a block is consecutive positions of one query head) | group (a block
               is the same position in every query head of a kv group, so GQA heads share
               each K/V load and every row of a block has the same causal limit)
  opt          O2 | O3 (`#pragma GCC optimize`)

Shared by all: K is transposed once per kv head into a [D][keys] scratch (so Q.K^T
vectorises over keys with no horizontal sums) and reused by the whole query-head group;
key blocks in the causal future of every row of a query block are skipped; the causal
boundary is applied in registers; exp is a Cephes polynomial (inputs below -88.4, masked
-inf included, give exactly 0) and a row nothing is visible to is written as zeros.
"""

from __future__ import annotations

from itertools import product
from typing import Any, NamedTuple

KNOBS: dict[str, list[Any]] = {
    "simd": ["scalar", "avx2", "avx512"],
    "softmax": ["two_pass", "online"],
    "query_block": [1, 2, 4, 6, 8],
    "key_block": [16, 32, 64],
    "rows": ["head", "group"],
    "opt": ["O2", "O3"],
}
DEFAULTS: dict[str, Any] = {"simd": "avx512", "softmax": "two_pass", "query_block": 8,
                            "key_block": 32, "rows": "group", "opt": "O3"}


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


# ---------------------------------------------------------------- instruction sets

class Isa(NamedTuple):
    """How one vector instruction set spells the operations the kernel needs (a
    NamedTuple: this file is loaded without a module entry, which dataclasses need)."""

    name: str
    lanes: int      # floats per vector (1 = plain C)
    vec: str        # C type of a vector
    p: str          # intrinsic prefix
    target: str     # gcc target string of the code using it
    registers: int  # vector registers

    def op(self, name: str, *args: str) -> str:
        return f"{self.p}_{name}_ps({', '.join(args)})"

    def set1(self, x: str) -> str:
        return self.op("set1", x)

    def load(self, ptr: str) -> str:
        return self.op("loadu", ptr)

    def store(self, ptr: str, v: str) -> str:
        return f"{self.op('storeu', ptr, v)};"

    def bcast(self, ptr: str) -> str:
        """One float from memory in every lane."""
        return f"_mm256_broadcast_ss({ptr})" if self.lanes == 8 else self.set1(f"*({ptr})")

    def hmax(self, v: str) -> str:
        if self.lanes == 16:
            return f"_mm512_reduce_max_ps({v})"
        return _hreduce256("max", v)

    def hadd(self, v: str) -> str:
        if self.lanes == 16:
            return f"_mm512_reduce_add_ps({v})"
        return _hreduce256("add", v)

    def exp(self, dst: str, src: str) -> str:
        """C statements: dst = exp(src) (Cephes polynomial, ~2 ulp). Inputs below -88.4,
        -inf included, give exactly 0: the clamp lands on exponent field 0."""
        c = self.set1
        if self.lanes == 16:
            floor = "_mm512_roundscale_ps(fx_, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)"
            bits = ("_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32("
                    "_mm512_cvttps_epi32(fx_), _mm512_set1_epi32(127)), 23))")
        else:
            floor = "_mm256_floor_ps(fx_)"
            bits = ("_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32("
                    "_mm256_cvttps_epi32(fx_), _mm256_set1_epi32(127)), 23))")
        poly = "".join(f"\n                y_ = {self.op('fmadd', 'y_', 'x_', c(k))};"
                       for k in ("1.3981999507e-3f", "8.3334519073e-3f", "4.1665795894e-2f",
                                 "1.6666665459e-1f", "5.0000001201e-1f"))
        return f"""{{
                {self.vec} x_ = {self.op('max', self.op('min', src, c('88.3762626647949f')),
                                         c('-88.3762626647949f'))};
                {self.vec} fx_ = {self.op('fmadd', 'x_', c('1.44269504088896341f'), c('0.5f'))};
                fx_ = {floor};
                x_ = {self.op('fnmadd', 'fx_', c('0.693359375f'), 'x_')};
                x_ = {self.op('fnmadd', 'fx_', c('-2.12194440e-4f'), 'x_')};
                {self.vec} y_ = {c('1.9875691500e-4f')};{poly}
                y_ = {self.op('fmadd', 'y_', self.op('mul', 'x_', 'x_'),
                              self.op('add', 'x_', c('1.0f')))};
                {dst} = {self.op('mul', 'y_', bits)};
            }}"""

    def causal(self, var: str, first_key: str, limit: str) -> str:
        """C statement: lanes of `var` whose key index (first_key + lane) >= limit -> -inf."""
        if self.lanes == 16:
            return (f"{var} = _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(_mm512_add_epi32("
                    f"_mm512_set1_epi32({first_key}), iota_), _mm512_set1_epi32({limit})), "
                    f"ninf_, {var});")
        return (f"{var} = _mm256_blendv_ps(ninf_, {var}, _mm256_castsi256_ps(_mm256_cmpgt_epi32("
                f"_mm256_set1_epi32({limit}), _mm256_add_epi32(_mm256_set1_epi32({first_key}), "
                f"iota_))));")

    def consts(self) -> str:
        """Declarations the causal masking uses."""
        if self.lanes == 16:
            return ("const __m512i iota_ = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, "
                    "6, 5, 4, 3, 2, 1, 0);\n    const __m512 ninf_ = _mm512_set1_ps(-INFINITY);")
        return ("const __m256i iota_ = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);\n"
                "    const __m256 ninf_ = _mm256_set1_ps(-INFINITY);")


def _hreduce256(op: str, vec: str) -> str:
    """C expression: horizontal max/add of a __m256 as a float."""
    return (f"({{ __m128 h_ = _mm_{op}_ps(_mm256_castps256_ps128({vec}), "
            f"_mm256_extractf128_ps({vec}, 1)); h_ = _mm_{op}_ps(h_, _mm_movehl_ps(h_, h_)); "
            f"h_ = _mm_{op}_ss(h_, _mm_shuffle_ps(h_, h_, 1)); _mm_cvtss_f32(h_); }})")


AVX2 = Isa("avx2", 8, "__m256", "_mm256", "avx2,fma", 16)
AVX512 = Isa("avx512", 16, "__m512", "_mm512", "avx512f,avx2,fma", 32)


# ---------------------------------------------------------------- kernel pieces (vector)

def _tile(online: bool, j0: str = "j0") -> str:
    """Where the P tile of keys from j0 lives: one tile (online), or tile-major rows of
    the whole key range (two_pass), so rows of a tile are KB floats apart either way."""
    return "sc" if online else f"(sc + (size_t)({j0} / KB) * QB * KB)"


def _score_tile(isa: Isa, online: bool) -> str:
    """Scores of QB rows x KB keys from key j0, scaled, into the tile at _tile(online)
    (rows KB floats apart); hidden keys (causal future, padding past S, explicit mask) set
    to -inf. Only the FMA tile is unrolled: the rest are short rolled loops over L1, which
    keeps the code (and the sanitizer build) small."""
    nv = "KB / VW"
    tile = _tile(online)
    return f"""float *tile_ = {tile};
            {{
                {isa.vec} s_[QB][{nv}];
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    #pragma GCC unroll 8
                    for (int c = 0; c < {nv}; c++)
                        s_[r][c] = {isa.op('setzero')};
                for (int d = 0; d < D; d++) {{
                    const float *kd = kt + (size_t)d * SP + j0;
                    const float *qd_ = qp + (size_t)d * QB;
                    {isa.vec} k_[{nv}];
                    #pragma GCC unroll 8
                    for (int c = 0; c < {nv}; c++)
                        k_[c] = {isa.load('kd + VW * c')};
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
                        {isa.vec} q_ = {isa.bcast('qd_ + r')};
                        #pragma GCC unroll 8
                        for (int c = 0; c < {nv}; c++)
                            s_[r][c] = {isa.op('fmadd', 'q_', 'k_[c]', 's_[r][c]')};
                    }}
                }}
                const {isa.vec} vs_ = {isa.set1('scale')};
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    #pragma GCC unroll 8
                    for (int c = 0; c < {nv}; c++)
                        {isa.store('tile_ + r * KB + VW * c', isa.op('mul', 's_[r][c]', 'vs_'))}
            }}
            if (j0 + KB > jmin) {{ /* some key of this tile is past some row's limit */
                for (int r = 0; r < QB; r++)
                    for (int c = 0; c < KB; c += VW) {{
                        {isa.vec} x_ = {isa.load('tile_ + r * KB + c')};
                        {isa.causal('x_', 'j0 + c', 'lim[r]')}
                        {isa.store('tile_ + r * KB + c', 'x_')}
                    }}
            }}
            if (mask != NULL) {{ /* explicit mask: bytes, scalar */
                for (int r = 0; r < QB; r++)
                    for (int c = 0; c < KB && j0 + c < S; c++)
                        if (!mr[r][j0 + c])
                            tile_[r * KB + c] = -INFINITY;
            }}"""


def _pv_widths(isa: Isa, qb: int) -> list[int]:
    """Vectors per row of the output chunk kept in registers during P.V (widest first):
    as wide as the register file allows with QB rows, then narrower for the D remainder."""
    budget = isa.registers * 3 // 4
    widest = max([w for w in (4, 2, 1) if qb * w <= budget] or [1])
    return [w for w in (4, 2, 1) if w <= widest]


def _pv(isa: Isa, qb: int, online: bool) -> str:
    """Rows' outputs += P.V: over the tile at j0 (online) or every tile up to jend.

    P rows of a tile are KB floats apart (_tile); V rows come straight from vh.
    online: accumulators in scratch `acc` (stride DP), rescaled by corr[r] first;
    two_pass: from zero, written to the row's output times inv[r].
    """
    def init(w: int) -> str:
        if online:
            return isa.op("mul", isa.load(f"acc + (size_t)r * DP + d0 + VW * {w}"), "vc_[r]")
        return isa.op("setzero")

    def store(w: int) -> str:
        if online:
            return isa.store(f"acc + (size_t)r * DP + d0 + VW * {w}", f"a_[r][{w}]")
        return ("if (r < nq) " + isa.store(f"orow[r] + d0 + VW * {w}",
                                           isa.op("mul", f"a_[r][{w}]", "vc_[r]")))

    tiles = ("for (int t_ = j0; t_ == j0; t_++) {" if online
             else "for (int t_ = 0; t_ < jend; t_ += KB) {")
    keys = f"""const float *pb_ = {_tile(online, "t_")};
                        const float *vb_ = vh + (size_t)t_ * D;
                        int nk_ = jend - t_ < KB ? jend - t_ : KB; /* keys that exist */"""
    blocks = []
    for width in _pv_widths(isa, qb):
        inits = "\n".join(f"                        a_[r][{w}] = {init(w)};"
                          for w in range(width))
        loads = "\n".join(f"                            v_[{w}] = "
                          f"{isa.load(f'vb_ + (size_t)c * D + d0 + VW * {w}')};"
                          for w in range(width))
        fmas = "\n".join(f"                                a_[r][{w}] = "
                         f"{isa.op('fmadd', 'p_', f'v_[{w}]', f'a_[r][{w}]')};"
                         for w in range(width))
        stores = "\n".join(f"                        {store(w)}" for w in range(width))
        blocks.append(f"""for (; d0 + VW * {width} <= D; d0 += VW * {width}) {{
                    {isa.vec} a_[QB][{width}];
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
{inits}
                    }}
                    {tiles}
                        {keys}
                        for (int c = 0; c < nk_; c++) {{
                            {isa.vec} v_[{width}];
{loads}
                            #pragma GCC unroll 8
                            for (int r = 0; r < QB; r++) {{
                                {isa.vec} p_ = {isa.bcast('pb_ + r * KB + c')};
{fmas}
                            }}
                        }}
                    }}
                    #pragma GCC unroll 8
                    for (int r = 0; r < QB; r++) {{
{stores}
                    }}
                }}""")
    factor = "corr" if online else "inv"
    init_s = "acc[(size_t)r * DP + d0] * corr[r]" if online else "0.0f"
    store_s = ("acc[(size_t)r * DP + d0] = a_[r];" if online
               else "if (r < nq) orow[r][d0] = a_[r] * inv[r];")
    joined = "\n                ".join(blocks)
    return f"""{{
                {isa.vec} vc_[QB];
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    vc_[r] = {isa.set1(f'{factor}[r]')};
                int d0 = 0;
                {joined}
                for (; d0 < D; d0++) {{ /* D not a multiple of the vector width */
                    float a_[QB];
                    for (int r = 0; r < QB; r++)
                        a_[r] = {init_s};
                    {tiles}
                        {keys}
                        for (int c = 0; c < nk_; c++) {{
                            float vv_ = vb_[(size_t)c * D + d0];
                            for (int r = 0; r < QB; r++)
                                a_[r] += pb_[r * KB + c] * vv_;
                        }}
                    }}
                    for (int r = 0; r < QB; r++)
                        {store_s}
                }}
            }}"""


def _row_max(isa: Isa, row: str) -> str:
    """C expression statements: float mx_ = max of KB floats at row."""
    return f"""{isa.vec} mv_ = {isa.load(row)};
                    for (int c = VW; c < KB; c += VW)
                        mv_ = {isa.op('max', 'mv_', isa.load(f'{row} + c'))};
                    float mx_ = {isa.hmax('mv_')};"""


def _exp_row(isa: Isa, row: str) -> str:
    """C statements: KB floats at row -> exp(x - ref_) in place; vsum_ += them."""
    return f"""for (int c = 0; c < KB; c += VW) {{
                        {isa.vec} e_;
                        {isa.exp('e_', isa.op('sub', isa.load(f'{row} + c'), 'vr_'))}
                        vsum_ = {isa.op('add', 'vsum_', 'e_')};
                        {isa.store(f'{row} + c', 'e_')}
                    }}"""


def _online_vec(isa: Isa, qb: int) -> str:
    return f"""float m[QB], l[QB], corr[QB];
            for (int r = 0; r < QB; r++) {{
                m[r] = -INFINITY;
                l[r] = 0.0f;
                memset(acc + (size_t)r * DP, 0, sizeof(float) * (size_t)DP);
            }}
            for (int j0 = 0; j0 < jend; j0 += KB) {{
                {_score_tile(isa, True)}
                for (int r = 0; r < QB; r++) {{
                    float *row_ = sc + r * KB;
                    {_row_max(isa, "row_")}
                    float mn_ = mx_ > m[r] ? mx_ : m[r];
                    float ref_ = mn_ == -INFINITY ? 0.0f : mn_; /* nothing visible yet */
                    corr[r] = m[r] == mn_ ? 1.0f : m[r] == -INFINITY ? 0.0f : expf(m[r] - ref_);
                    const {isa.vec} vr_ = {isa.set1('ref_')};
                    {isa.vec} vsum_ = {isa.op('setzero')};
                    {_exp_row(isa, "row_")}
                    l[r] = l[r] * corr[r] + {isa.hadd('vsum_')};
                    m[r] = mn_;
                }}
                {_pv(isa, qb, True)}
            }}
            for (int r = 0; r < nq; r++) {{
                float iv_ = l[r] > 0.0f ? 1.0f / l[r] : 0.0f; /* no visible key: zeros */
                const float *a_ = acc + (size_t)r * DP;
                const {isa.vec} vi_ = {isa.set1('iv_')};
                int d = 0;
                for (; d + VW <= D; d += VW)
                    {isa.store('orow[r] + d', isa.op('mul', isa.load('a_ + d'), 'vi_'))}
                for (; d < D; d++)
                    orow[r][d] = a_[d] * iv_;
            }}"""


def _two_pass_vec(isa: Isa, qb: int) -> str:
    return f"""float inv[QB];
            for (int j0 = 0; j0 < jend; j0 += KB) {{
                {_score_tile(isa, False)}
            }}
            for (int r = 0; r < QB; r++) {{
                float mt_ = -INFINITY;
                for (int t_ = 0; t_ < jend; t_ += KB) {{
                    {_row_max(isa, f"({_tile(False, 't_')} + r * KB)")}
                    mt_ = mx_ > mt_ ? mx_ : mt_;
                }}
                float ref_ = mt_ == -INFINITY ? 0.0f : mt_; /* nothing visible: all p = 0 */
                const {isa.vec} vr_ = {isa.set1('ref_')};
                {isa.vec} vsum_ = {isa.op('setzero')};
                for (int t_ = 0; t_ < jend; t_ += KB) {{
                    float *row_ = {_tile(False, "t_")} + r * KB;
                    {_exp_row(isa, "row_")}
                }}
                float sum_ = {isa.hadd('vsum_')};
                inv[r] = sum_ > 0.0f ? 1.0f / sum_ : 0.0f; /* no visible key: zeros */
            }}
            {_pv(isa, qb, False)}"""


# ---------------------------------------------------------------- kernel pieces (scalar)

def _scalar_tile(online: bool) -> str:
    base = "0" if online else "j0"
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
                    for (int c = 0; c < KB; c++) {{
                        int j = j0 + c;
                        int hidden = j >= lim[r] || (mask != NULL && j < S && !mr[r][j]);
                        sc[(size_t)r * SC + {base} + c] = hidden ? -INFINITY : s_[r][c] * scale;
                    }}
            }}"""


def _scalar_pv(online: bool, jcount: str) -> str:
    init = "acc[(size_t)r * DP + d0] * corr[r]" if online else "0.0f"
    store = ("acc[(size_t)r * DP + d0] = a_[r];" if online
             else "if (r < nq) orow[r][d0] = a_[r] * inv[r];")
    return f"""for (int d0 = 0; d0 < D; d0++) {{
                    float a_[QB];
                    for (int r = 0; r < QB; r++)
                        a_[r] = {init};
                    for (int c = 0; c < {jcount}; c++) {{
                        float vv_ = vrow[(size_t)c * D + d0];
                        for (int r = 0; r < QB; r++)
                            a_[r] += sc[(size_t)r * SC + c] * vv_;
                    }}
                    for (int r = 0; r < QB; r++)
                        {store}
                }}"""


def _online_scalar() -> str:
    return f"""float m[QB], l[QB], corr[QB];
            for (int r = 0; r < QB; r++) {{
                m[r] = -INFINITY;
                l[r] = 0.0f;
                memset(acc + (size_t)r * DP, 0, sizeof(float) * (size_t)DP);
            }}
            for (int j0 = 0; j0 < jend; j0 += KB) {{
                {_scalar_tile(True)}
                for (int r = 0; r < QB; r++) {{
                    float *row_ = sc + (size_t)r * SC;
                    float mx_ = -INFINITY;
                    for (int c = 0; c < KB; c++)
                        mx_ = row_[c] > mx_ ? row_[c] : mx_;
                    float mn_ = mx_ > m[r] ? mx_ : m[r];
                    float ref_ = mn_ == -INFINITY ? 0.0f : mn_;
                    corr[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - ref_);
                    float sum_ = 0.0f;
                    for (int c = 0; c < KB; c++) {{
                        row_[c] = expf(row_[c] - ref_);
                        sum_ += row_[c];
                    }}
                    l[r] = l[r] * corr[r] + sum_;
                    m[r] = mn_;
                }}
                int jb = jend - j0 < KB ? jend - j0 : KB;
                const float *vrow = vh + (size_t)j0 * D;
                {_scalar_pv(True, "jb")}
            }}
            for (int r = 0; r < nq; r++) {{
                float iv_ = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                for (int d = 0; d < D; d++)
                    orow[r][d] = acc[(size_t)r * DP + d] * iv_;
            }}"""


def _two_pass_scalar() -> str:
    return f"""float inv[QB];
            int jn = (jend + KB - 1) / KB * KB;
            for (int j0 = 0; j0 < jend; j0 += KB)
                {_scalar_tile(False)}
            for (int r = 0; r < QB; r++) {{
                float *row_ = sc + (size_t)r * SC;
                float mx_ = -INFINITY;
                for (int c = 0; c < jn; c++)
                    mx_ = row_[c] > mx_ ? row_[c] : mx_;
                float ref_ = mx_ == -INFINITY ? 0.0f : mx_;
                float sum_ = 0.0f;
                for (int c = 0; c < jn; c++) {{
                    row_[c] = expf(row_[c] - ref_);
                    sum_ += row_[c];
                }}
                inv[r] = sum_ > 0.0f ? 1.0f / sum_ : 0.0f;
            }}
            {{
                const float *vrow = vh;
                {_scalar_pv(False, "jend")}
            }}"""


# ---------------------------------------------------------------- whole kernel

def _core(name: str, isa: Isa | None, online: bool, qb: int, group_rows: bool) -> str:
    """A nested function doing one (batch, kv head): every query row of its heads."""
    pack = ""
    if isa is None:
        body = _online_scalar() if online else _two_pass_scalar()
        attr, consts, lanes = "", "", 1
    else:
        body = _online_vec(isa, qb) if online else _two_pass_vec(isa, qb)
        attr = f'__attribute__((target("{isa.target}"))) '
        consts, lanes = isa.consts(), isa.lanes
        pack = """for (int d = 0; d < D; d++) /* one pointer for every broadcast of Q */
                #pragma GCC unroll 8
                for (int r = 0; r < QB; r++)
                    qp[(size_t)d * QB + r] = qr[r][d];"""
    # row x of the group's group*T rows -> (query head hh, position i)
    if group_rows:
        split = "int hh = x % group, i = x / group;"
    else:
        split = "int hh = x / T, i = x % T;"
    return f"""    {attr}void {name}(const float *kt, const float *vh, const float *qg, float *og,
                     const unsigned char *mask, float *sc, float *acc, float *qp, int T,
                     int S, int D,
                     int SP, int DP, int SC, int group, int shift, int causal, float scale)
    {{
    enum {{ VW = {lanes} }};
    {consts}
    (void)acc;
    (void)qp;
    (void)DP;
    int rows = group * T;
    for (int x0 = 0; x0 < rows; x0 += QB) {{
            int nq = rows - x0 < QB ? rows - x0 : QB;
            const float *qr[QB];
            float *orow[QB];
            const unsigned char *mr[QB];
            int lim[QB]; /* keys [0, lim) may be visible to row r */
            int jend = 0, jmin = S;
            for (int r = 0; r < QB; r++) {{
                int x = x0 + (r < nq ? r : nq - 1); /* spare rows repeat the last real one */
                {split}
                qr[r] = qg + ((size_t)hh * T + i) * D;
                orow[r] = og + ((size_t)hh * T + i) * D;
                mr[r] = mask != NULL ? mask + (size_t)i * S : NULL;
                int lr = causal ? i + shift + 1 : S;
                lim[r] = lr < 0 ? 0 : lr > S ? S : lr;
                jend = lim[r] > jend ? lim[r] : jend;
                jmin = lim[r] < jmin ? lim[r] : jmin;
            }}
            (void)jmin;
            (void)mr;
            {pack}
            if (jend == 0) {{ /* nothing visible for any row of this block */
                for (int r = 0; r < nq; r++)
                    memset(orow[r], 0, sizeof(float) * (size_t)D);
                continue;
            }}
            {body}
    }}
    }}
"""


def render(knobs: dict[str, Any]) -> str:
    """A complete candidate.c for this knob combination."""
    k = _check(knobs)
    simd, online = k["simd"], k["softmax"] == "online"
    qb, kb = int(k["query_block"]), int(k["key_block"])
    group_rows = k["rows"] == "group"
    head = [f'#pragma GCC optimize("{k["opt"]}")']
    if simd != "scalar":
        head.append('#pragma GCC target("avx2,fma")')
    head += ["#include <math.h>", "#include <stdlib.h>", "#include <string.h>"]
    if simd != "scalar":
        head.append("#include <immintrin.h>")
    cores: list[str] = []
    if simd == "scalar":
        cores.append(_core("core_scalar", None, online, qb, group_rows))
        dispatch = "core_scalar(ARGS);"
    else:
        cores.append(_core("core_avx2", AVX2, online, qb, group_rows))
        dispatch = "core_avx2(ARGS);"
    if simd == "avx512":
        cores.append(_core("core_avx512", AVX512, online, qb, group_rows))
        dispatch = ("if (wide)\n                core_avx512(ARGS);\n            else\n"
                    "                core_avx2(ARGS);")
    note = (f"/* tuner: simd={simd} softmax={k['softmax']} query_block={qb} key_block={kb} "
            f"rows={k['rows']} opt={k['opt']} */")
    nested = "\n".join(cores)
    args = ("kt, vh, qg, og, mask, sc, acc, qp, T, S, D, SP, DP, SC, group, shift, causal, "
            "scale")
    wide = ("    /* XCR0 bits 5-7 (opmask, ZMM_Hi256, Hi16_ZMM) are set only by an OS on a CPU "
            "with\n       AVX-512; without them every AVX-512 instruction faults: use AVX2 */\n"
            "    const int wide = (_xgetbv(0) & 0xE6) == 0xE6;\n" if simd == "avx512" else "")
    return "\n".join([note, *head, ""]) + f"""
void attention(const float *q, const float *k, const float *v, float *out,
               const unsigned char *mask, int batch, int heads, int kv_heads,
               int t_len, int s_len, int head_dim, float scale, int causal)
{{
    enum {{ QB = {qb}, KB = {kb} }};
{nested}
    const int D = head_dim, S = s_len, T = t_len;
    const int SP = (S + KB - 1) / KB * KB; /* keys padded to whole tiles */
    const int DP = (D + 15) / 16 * 16;
    const int SC = {"KB" if online else "SP"}; /* score row stride in scratch */
    const int group = heads / kv_heads;
    const int shift = S - T; /* causal: query i sees keys j <= i + shift */
{wide}    size_t need = (size_t)D * SP + (size_t)QB * SC + (size_t)QB * DP + (size_t)QB * D;
    float *kt = malloc(sizeof(float) * need);
    if (kt == NULL)
        return;
    float *sc = kt + (size_t)D * SP;
    float *acc = sc + (size_t)QB * SC;
    float *qp = acc + (size_t)QB * DP; /* the block's query rows, [D][QB] */
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < kv_heads; g++) {{
            const float *kh = k + (size_t)(b * kv_heads + g) * S * D;
            const float *vh = v + (size_t)(b * kv_heads + g) * S * D;
            /* K^T once per kv head, shared by the query-head group; zero padding */
            for (int j = 0; j < SP; j++)
                for (int d = 0; d < D; d++)
                    kt[(size_t)d * SP + j] = j < S ? kh[(size_t)j * D + d] : 0.0f;
            const float *qg = q + (size_t)(b * heads + g * group) * T * D;
            float *og = out + (size_t)(b * heads + g * group) * T * D;
            {dispatch.replace("ARGS", args)}
        }}
    free(kt);
}}
"""
