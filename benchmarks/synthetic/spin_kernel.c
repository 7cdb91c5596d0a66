/* The synthetic kernel timed by bench_acceptance.py --harness: WORK is set per build. */
#include <stdint.h>
#ifndef WORK
#define WORK 1000
#endif
void spin(float *out, const float *in, long iters) {
    uint64_t x = (uint64_t)(in[0] * 4294967296.0f) | 1u;
    long n = iters * WORK / 1000;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        __asm__ volatile("" : "+r"(x)); /* no closed form, no vectorising */
    }
    out[0] = (float)(x >> 40);
}
