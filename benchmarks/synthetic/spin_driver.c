/* A harness driver for the synthetic spin kernel: lets bench_acceptance.py time a kernel of
 * KNOWN relative speed through the real evaluation path (driver, one worker per
 * implementation, per-call slots, CPU clock read from outside).
 *
 *   void spin(float *out, const float *in, long iters)
 *
 * does `iters * WORK / 1000` steps of a 64-bit LCG seeded from in[0] and writes a finite
 * float to out[0]; a candidate and an incumbent differ only in WORK. Nothing is checked
 * but that out[0] was written (the two compute different numbers by design).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "rl_harness.h"

typedef void (*spin_fn)(float *out, const float *in, long iters);

void rl_validate(rl_fnptr fn, rl_rng *rng) {
    rl_buf bo, bi;
    float *out = rl_buf_alloc(&bo, sizeof(float), 0, 64, 64);
    float *in = rl_buf_alloc(&bi, sizeof(float), 0, 0, 0);
    in[0] = rl_uniform(rng, 0.f, 1.f);
    out[0] = NAN;
    ((spin_fn)fn)(out, in, 1000);
    if (!isfinite(out[0])) rl_fail("nan_inf", "out[0] was not written");
    rl_buf_free(&bi);
    rl_buf_free(&bo);
}

void rl_case_setup(rl_case *c, const long *params, int np) {
    long *iters = malloc(sizeof *iters);
    *iters = np > 0 ? params[0] : 1000;
    rl_case_buffer(c, sizeof(float), RL_PER_CALL | RL_OUTPUT);
    rl_case_buffer(c, sizeof(float), RL_PER_CALL);
    rl_case_set_user(c, iters);
}

void rl_case_fill(rl_case *c, int buf, void *data, size_t bytes, rl_rng *rng, int fresh,
                  size_t *lo, size_t *hi) {
    (void)c, (void)buf, (void)fresh, (void)lo, (void)hi;
    rl_fill_uniform(data, bytes / sizeof(float), rng, 0.f, 1.f);
}

void rl_case_call(rl_case *c, void *const *b, rl_fnptr fn) {
    ((spin_fn)fn)(b[0], b[1], *(long *)rl_case_user(c));
}

int rl_case_check(rl_case *c, const void *const *b, rl_rng *rng, int full, char *msg,
                  size_t cap) {
    (void)c, (void)rng, (void)full;
    if (isfinite(((const float *)b[0])[0])) return 0;
    snprintf(msg, cap, "nan_inf out[0] was not written");
    return 1;
}
