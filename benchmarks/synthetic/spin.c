/* Calibrated busy loop timed the way a ratchetloop harness times candidates.
 *
 * Usage: spin ITERS_REF ITERS_CAND ROUNDS WARMUP SEED
 * The candidate runs the same loop as the reference for ITERS_CAND iterations, so its
 * true speed relative to the reference is known (ITERS_CAND / ITERS_REF). After WARMUP
 * untimed calls of each, every round times both once, in an order chosen at random per
 * round (A-B or B-A), and prints "candidate_ns reference_ns" -- one paired sample.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t sink;

__attribute__((noinline)) static uint64_t spin(uint64_t n, uint64_t x) {
    for (uint64_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        __asm__ volatile("" : "+r"(x)); /* no closed form, no vectorising */
    }
    return x;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double timed(uint64_t iters) {
    double t0 = now_ns();
    sink ^= spin(iters, sink | 1);
    return now_ns() - t0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s ITERS_REF ITERS_CAND ROUNDS WARMUP SEED\n", argv[0]);
        return 2;
    }
    uint64_t ref = strtoull(argv[1], NULL, 10), cand = strtoull(argv[2], NULL, 10);
    long rounds = strtol(argv[3], NULL, 10), warmup = strtol(argv[4], NULL, 10);
    uint64_t rng = strtoull(argv[5], NULL, 10) * 0x9E3779B97F4A7C15ULL + 1;
    for (long i = 0; i < warmup; i++) {
        timed(ref);
        timed(cand);
    }
    for (long r = 0; r < rounds; r++) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        double tc, tr;
        if (rng & 1) { tc = timed(cand); tr = timed(ref); }
        else { tr = timed(ref); tc = timed(cand); }
        printf("%.0f %.0f\n", tc, tr);
    }
    fprintf(stderr, "%llu\n", (unsigned long long)sink);
    return 0;
}
