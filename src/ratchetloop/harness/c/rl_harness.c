/* ratchetloop C harness utilities (driver side): RNG, clock, failure reporting. */
#define _POSIX_C_SOURCE 200809L
#include "rl_harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

uint64_t rl_next(rl_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rl_unit(rl_rng *r) { return (double)(rl_next(r) >> 11) * (1.0 / 9007199254740992.0); }

float rl_uniform(rl_rng *r, float lo, float hi) { return lo + (hi - lo) * (float)rl_unit(r); }

void rl_fill_uniform(float *p, size_t n, rl_rng *r, float lo, float hi) {
    for (size_t i = 0; i < n; i++) p[i] = rl_uniform(r, lo, hi);
}

size_t rl_below(rl_rng *r, size_t n) { return n ? (size_t)(rl_next(r) % n) : 0; }

double rl_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

void rl_fail(const char *kind, const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    printf("RLFAIL %s ", kind);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(3);
}

void rl_info(const char *fmt, ...) {
    va_list ap;
    printf("RLINFO ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}
