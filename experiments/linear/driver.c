/* linear experiment driver: benchmark cases and adversarial validation of matmul_forward.
 *
 * The harness (ratchetloop/harness/c) links this into the trusted driver; the candidate
 * and the references each run in a worker of their own, and `fn` below is a stub that
 * runs one call there (its buffers come from rl_buf_alloc: the worker's arena).
 * Reference results are computed in double; a float result passes when
 *   |got - ref| <= TOL_REL * (|bias| + sum_i |inp_i * w_i|) + TOL_ABS
 * which allows any accumulation order (blocked, SIMD, FMA) but not lost terms, a dropped
 * bias, or reduced-precision arithmetic.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_harness.h"

typedef void (*matmul_fn)(float *out, const float *inp, const float *weight, const float *bias,
                          int B, int T, int C, int OC);

#define TOL_REL 1e-5
#define TOL_ABS 1e-6

/* ---------------- result comparison ---------------- */

typedef struct {
    int bad;      /* 0 ok, 1 wrong value, 2 non-finite */
    long bt, o;   /* first worst element */
    double got, want, err, tol;
    double max_err;
} cmp_t;

static void ref_row(double *ref, double *mag, const float *x, const float *w, const float *bias,
                    int C, int OC) {
    for (int o = 0; o < OC; o++) {
        double acc = bias ? (double)bias[o] : 0.0;
        double m = bias ? fabs((double)bias[o]) : 0.0;
        const float *wr = w + (size_t)o * C;
        for (int i = 0; i < C; i++) {
            double p = (double)x[i] * (double)wr[i];
            acc += p;
            m += fabs(p);
        }
        ref[o] = acc;
        mag[o] = m;
    }
}

/* Compare rows `rows[0..nrows)` of out (all rows when rows == NULL). */
static cmp_t compare(const float *out, const float *inp, const float *w, const float *bias,
                     int BT, int C, int OC, const long *rows, int nrows) {
    cmp_t r = {0};
    double worst = 0.0;
    double *ref = malloc(sizeof(double) * (size_t)OC);
    double *mag = malloc(sizeof(double) * (size_t)OC);
    int n = rows ? nrows : BT;
    for (int k = 0; k < n; k++) {
        long bt = rows ? rows[k] : k;
        ref_row(ref, mag, inp + (size_t)bt * C, w, bias, C, OC);
        for (int o = 0; o < OC; o++) {
            double got = out[(size_t)bt * OC + o];
            double tol = TOL_REL * mag[o] + TOL_ABS;
            if (!isfinite(got)) {
                if (r.bad != 2) {
                    r.bad = 2; r.bt = bt; r.o = o; r.got = got; r.want = ref[o]; r.tol = tol;
                }
                continue;
            }
            double err = fabs(got - ref[o]);
            if (err > r.max_err) r.max_err = err;
            if (r.bad != 2 && err > tol && err / tol > worst) {
                worst = err / tol;
                r.bad = 1; r.bt = bt; r.o = o; r.got = got; r.want = ref[o]; r.err = err;
                r.tol = tol;
            }
        }
    }
    free(ref);
    free(mag);
    return r;
}

static int describe(char *msg, size_t cap, const cmp_t *r, const char *what, int B, int T,
                    int C, int OC, int has_bias) {
    if (r->bad == 2)
        return snprintf(msg, cap, "nan_inf %s B=%d T=%d C=%d OC=%d bias=%s: out[%ld][%ld] = %g "
                        "is not finite (expected %.6g); every output element must be written "
                        "with finite values for finite inputs (out starts as NaN garbage: do "
                        "not accumulate into it)", what, B, T, C, OC, has_bias ? "yes" : "NULL",
                        r->bt, r->o, r->got, r->want);
    return snprintf(msg, cap, "wrong_result %s B=%d T=%d C=%d OC=%d bias=%s: max abs error "
                    "%.3g; worst at out[%ld][%ld] = %.7g, expected %.7g (error %.3g > "
                    "tolerance %.3g)", what, B, T, C, OC, has_bias ? "yes" : "NULL",
                    r->max_err, r->bt, r->o, r->got, r->want, r->err, r->tol);
}

static void fill_nan(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

/* ---------------- benchmark cases ----------------
 * Every timed call has its own inp and out (harness slots); the weights and bias are
 * per call too when small, else one copy per case in which the harness changes one weight
 * and one bias between batches (the changed output channels are checked on every call,
 * so nothing derived from old weights can be reused). After each batch every call is
 * checked: all outputs written and finite, and a random sample plus the changed channels
 * against the double reference. */

enum { B_OUT, B_INP, B_W, B_BIAS };
#define PER_CALL_WEIGHTS_MAX (256u << 10)

typedef struct {
    int B, T, C, OC, has_bias, BT;
    long changed_w, changed_b; /* output channels of the last between-batch changes */
} lin_case;

void rl_case_setup(rl_case *c, const long *p, int np) {
    lin_case *L = calloc(1, sizeof *L);
    L->B = np > 0 ? (int)p[0] : 1;
    L->T = np > 1 ? (int)p[1] : 1;
    L->C = np > 2 ? (int)p[2] : 1;
    L->OC = np > 3 ? (int)p[3] : 1;
    L->has_bias = np > 4 ? (int)p[4] : 1;
    L->BT = L->B * L->T;
    L->changed_w = L->changed_b = -1;
    size_t nw = sizeof(float) * (size_t)L->OC * L->C;
    int wflags = nw <= PER_CALL_WEIGHTS_MAX ? RL_PER_CALL : 0;
    rl_case_buffer(c, sizeof(float) * (size_t)L->BT * L->OC, RL_PER_CALL | RL_OUTPUT);
    rl_case_buffer(c, sizeof(float) * (size_t)L->BT * L->C, RL_PER_CALL);
    rl_case_buffer(c, nw, wflags);
    rl_case_buffer(c, L->has_bias ? sizeof(float) * (size_t)L->OC : 0, wflags);
    rl_case_set_user(c, L);
}

void rl_case_fill(rl_case *c, int buf, void *data, size_t bytes, rl_rng *rng, int fresh,
                  size_t *lo, size_t *hi) {
    lin_case *L = rl_case_user(c);
    float *f = data;
    size_t n = bytes / sizeof(float);
    if (fresh) {
        rl_fill_uniform(f, n, rng, -1.f, 1.f);
        return;
    }
    size_t k = rl_below(rng, n);
    f[k] = f[k] > 0.f ? f[k] - 1.f : f[k] + 1.f; /* a real change, still in [-1, 1] */
    *lo = k * sizeof(float);
    *hi = *lo + sizeof(float);
    if (buf == B_W)
        L->changed_w = (long)(k / (size_t)L->C);
    else
        L->changed_b = (long)k;
}

void rl_case_call(rl_case *c, void *const *b, rl_fnptr fn) {
    lin_case *L = rl_case_user(c);
    ((matmul_fn)fn)(b[B_OUT], b[B_INP], b[B_W], b[B_BIAS], L->B, L->T, L->C, L->OC);
}

static int check_element(const lin_case *L, const float *out, const float *inp,
                         const float *w, const float *bias, long bt, long o, char *msg,
                         size_t cap) {
    const float *x = inp + (size_t)bt * L->C, *wr = w + (size_t)o * L->C;
    double acc = bias ? (double)bias[o] : 0.0, mag = bias ? fabs((double)bias[o]) : 0.0;
    for (int i = 0; i < L->C; i++) {
        double p = (double)x[i] * (double)wr[i];
        acc += p;
        mag += fabs(p);
    }
    double got = out[(size_t)bt * L->OC + o], err = fabs(got - acc);
    double tol = TOL_REL * mag + TOL_ABS;
    if (err <= tol) return 0;
    snprintf(msg, cap, "wrong_result B=%d T=%d C=%d OC=%d bias=%s: out[%ld][%ld] = %.7g, "
             "expected %.7g (error %.3g > tolerance %.3g)", L->B, L->T, L->C, L->OC,
             bias ? "yes" : "NULL", bt, o, got, acc, err, tol);
    return 1;
}

int rl_case_check(rl_case *c, const void *const *b, rl_rng *rng, int full, char *msg,
                  size_t cap) {
    lin_case *L = rl_case_user(c);
    const float *out = b[B_OUT], *inp = b[B_INP], *w = b[B_W], *bias = b[B_BIAS];
    size_t n = (size_t)L->BT * L->OC;
    for (size_t k = 0; k < n; k++) {
        if (!isfinite(out[k])) {
            snprintf(msg, cap, "nan_inf B=%d T=%d C=%d OC=%d: out[%ld][%ld] = %g was not "
                     "written or is not finite", L->B, L->T, L->C, L->OC,
                     (long)(k / (size_t)L->OC), (long)(k % (size_t)L->OC), (double)out[k]);
            return 1;
        }
    }
    if (full) {
        for (long bt = 0; bt < L->BT; bt++)
            for (long o = 0; o < L->OC; o++)
                if (check_element(L, out, inp, w, bias, bt, o, msg, cap)) return 1;
        return 0;
    }
    for (int r = 0; r < 2; r++) {
        long bt = (long)rl_below(rng, (size_t)L->BT);
        long cols[6] = {(long)rl_below(rng, (size_t)L->OC), (long)rl_below(rng, (size_t)L->OC),
                        (long)rl_below(rng, (size_t)L->OC), (long)rl_below(rng, (size_t)L->OC),
                        L->changed_w, L->changed_b};
        for (int k = 0; k < 6; k++)
            if (cols[k] >= 0 && cols[k] < L->OC &&
                check_element(L, out, inp, w, bias, bt, cols[k], msg, cap))
                return 1;
    }
    return 0;
}

/* ---------------- adversarial validation ---------------- */

/* B, T, C, OC: tiny, odd, prime, off-by-one around vector widths, and near-benchmark shapes
 * with odd token counts, so code specialised to the benchmark shapes is exercised too. */
static const int SHAPES[][4] = {
    {1, 1, 1, 1},    {1, 1, 1, 7},     {1, 1, 3, 1},     {1, 3, 7, 17},   {2, 3, 17, 33},
    {1, 7, 33, 5},   {3, 1, 8, 8},     {1, 5, 16, 32},   {1, 2, 9, 15},   {2, 4, 64, 96},
    {1, 17, 100, 129}, {1, 33, 31, 63}, {5, 3, 15, 255},  {1, 1, 768, 768}, {1, 3, 768, 65},
    {2, 2, 769, 31}, {1, 2, 3072, 9},  {1, 5, 768, 2304}, {1, 3, 3072, 96},
};
static const size_t MISALIGN[] = {0, 4, 8, 12, 20, 28, 36, 44, 60};
#define NMIS (sizeof MISALIGN / sizeof MISALIGN[0])

typedef struct {
    int B, T, C, OC, has_bias, BT;
    rl_buf bo, bi, bw, bb;
    float *out, *inp, *w, *bias;
    float *inp0, *w0, *bias0, *prev;
} vcase;

static void vcall(matmul_fn f, vcase *v) {
    f(v->out, v->inp, v->w, v->has_bias ? v->bias : NULL, v->B, v->T, v->C, v->OC);
}

static void snapshot_inputs(vcase *v) {
    memcpy(v->inp0, v->inp, sizeof(float) * (size_t)v->BT * v->C);
    memcpy(v->w0, v->w, sizeof(float) * (size_t)v->OC * v->C);
    memcpy(v->bias0, v->bias, sizeof(float) * (size_t)v->OC);
}

/* Everything that must hold after one call: guards, inputs untouched, finite & correct. */
static void verify(vcase *v, const char *what, long stale_row, long stale_col) {
    char msg[600];
    long off = 0;
    if (!rl_buf_guards_ok(&v->bo, &off))
        rl_fail("guard_overwrite", "%s B=%d T=%d C=%d OC=%d: wrote outside out at byte offset "
                "%ld (out holds %ld bytes = BT*OC floats; offsets < 0 are before it)", what,
                v->B, v->T, v->C, v->OC, off, (long)v->bo.bytes);
    if (memcmp(v->inp0, v->inp, sizeof(float) * (size_t)v->BT * v->C) ||
        memcmp(v->w0, v->w, sizeof(float) * (size_t)v->OC * v->C) ||
        memcmp(v->bias0, v->bias, sizeof(float) * (size_t)v->OC))
        rl_fail("input_modified", "%s B=%d T=%d C=%d OC=%d: inp, weight or bias changed; "
                "inputs are read-only", what, v->B, v->T, v->C, v->OC);
    cmp_t r = compare(v->out, v->inp, v->w, v->has_bias ? v->bias : NULL, v->BT, v->C, v->OC,
                      NULL, 0);
    if (!r.bad) return;
    /* did the changed part keep its previous value? then the result was reused */
    if (v->prev && r.bad == 1) {
        int same = 1;
        size_t n = (size_t)v->BT * v->OC;
        for (size_t k = 0; k < n && same; k++) {
            long bt = (long)(k / v->OC), o = (long)(k % v->OC);
            if ((stale_row >= 0 && bt != stale_row) || (stale_col >= 0 && o != stale_col))
                continue;
            same = memcmp(&v->out[k], &v->prev[k], sizeof(float)) == 0;
        }
        if (same)
            rl_fail("stale_result", "%s B=%d T=%d C=%d OC=%d bias=%s: the output did not "
                    "change although inputs changed at the same addresses; results must not "
                    "be cached or reused across calls", what, v->B, v->T, v->C, v->OC,
                    v->has_bias ? "yes" : "NULL");
    }
    describe(msg, sizeof msg, &r, what, v->B, v->T, v->C, v->OC, v->has_bias);
    char *space = strchr(msg, ' ');
    *space = 0;
    rl_fail(msg, "%s", space + 1);
}

void rl_validate(rl_fnptr fn, rl_rng *rng) {
    matmul_fn f = (matmul_fn)fn;
    size_t nshapes = sizeof SHAPES / sizeof SHAPES[0];
    for (size_t s = 0; s < nshapes; s++) {
        vcase v = {0};
        v.B = SHAPES[s][0]; v.T = SHAPES[s][1]; v.C = SHAPES[s][2]; v.OC = SHAPES[s][3];
        v.BT = v.B * v.T;
        v.has_bias = (s % 3) != 1; /* a third of the shapes with bias == NULL */
        size_t no = (size_t)v.BT * v.OC, ni = (size_t)v.BT * v.C, nw = (size_t)v.OC * v.C;
        /* misaligned (4-byte aligned, not 16/32) pointers on most shapes */
        v.out = rl_buf_alloc(&v.bo, no * 4, MISALIGN[s % NMIS], 64, 64);
        v.inp = rl_buf_alloc(&v.bi, ni * 4, MISALIGN[(s + 3) % NMIS], 0, 0);
        v.w = rl_buf_alloc(&v.bw, nw * 4, MISALIGN[(s + 5) % NMIS], 0, 0);
        v.bias = rl_buf_alloc(&v.bb, (size_t)v.OC * 4, MISALIGN[(s + 7) % NMIS], 0, 0);
        v.inp0 = malloc(ni * 4); v.w0 = malloc(nw * 4); v.bias0 = malloc((size_t)v.OC * 4);
        float *prev = malloc(no * 4);
        char what[64];

        rl_info("shape B=%d T=%d C=%d OC=%d bias=%s", v.B, v.T, v.C, v.OC,
                v.has_bias ? "yes" : "NULL");
        rl_fill_uniform(v.inp, ni, rng, -1.f, 1.f);
        rl_fill_uniform(v.w, nw, rng, -1.f, 1.f);
        rl_fill_uniform(v.bias, (size_t)v.OC, rng, -1.f, 1.f);
        snapshot_inputs(&v);
        fill_nan(v.out, no);
        vcall(f, &v);
        verify(&v, "first call", -1, -1);

        /* all inputs replaced at the same addresses; out keeps the previous result */
        memcpy(prev, v.out, no * 4); v.prev = prev;
        rl_fill_uniform(v.inp, ni, rng, -1.f, 1.f);
        rl_fill_uniform(v.w, nw, rng, -1.f, 1.f);
        rl_fill_uniform(v.bias, (size_t)v.OC, rng, -1.f, 1.f);
        snapshot_inputs(&v);
        vcall(f, &v);
        verify(&v, "second call with new inputs at the same addresses", -1, -1);

        /* one activation changed: its row must change */
        long bt = (long)rl_below(rng, (size_t)v.BT), i = (long)rl_below(rng, (size_t)v.C);
        memcpy(prev, v.out, no * 4);
        v.inp[bt * v.C + i] += 2.0f;
        snapshot_inputs(&v);
        vcall(f, &v);
        snprintf(what, sizeof what, "after changing only inp[%ld][%ld]", bt, i);
        verify(&v, what, bt, -1);

        /* one weight changed: its column must change */
        long o = (long)rl_below(rng, (size_t)v.OC);
        i = (long)rl_below(rng, (size_t)v.C);
        memcpy(prev, v.out, no * 4);
        v.w[o * v.C + i] += 2.0f;
        snapshot_inputs(&v);
        vcall(f, &v);
        snprintf(what, sizeof what, "after changing only weight[%ld][%ld]", o, i);
        verify(&v, what, -1, o);

        if (v.has_bias) {
            o = (long)rl_below(rng, (size_t)v.OC);
            memcpy(prev, v.out, no * 4);
            v.bias[o] += 1.5f;
            snapshot_inputs(&v);
            vcall(f, &v);
            snprintf(what, sizeof what, "after changing only bias[%ld]", o);
            verify(&v, what, -1, o);
        }
        rl_buf_free(&v.bo); rl_buf_free(&v.bi); rl_buf_free(&v.bw); rl_buf_free(&v.bb);
        free(v.inp0); free(v.w0); free(v.bias0); free(prev);
    }
}
