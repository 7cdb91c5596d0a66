/* ratchetloop C harness main(): validation mode and the persistent timing protocol.
 *
 *   prog validate <seed> [i]  run rl_validate() on every impl in the table (the eval build
 *                             holds only the candidate), or only on impl i; "RLIMPL <name>"
 *                             precedes each; prints RLOK when all pass
 *   prog bench                read commands on stdin, one per line, answer on stdout:
 *     seed <u64>                        reseed the RNG (inputs and per-round order)
 *     clock cpu|wall                    time with this thread's CPU time (default) or
 *                                       CLOCK_MONOTONIC
 *     case <name> <p0> <p1> ...         add a case (integer params, experiment's order)
 *     calibrate <min_us> <warm> <budget_us> <max_batches>
 *                                       warm every impl; per case pick reps and batches
 *                                       -> "reps <case> <reps> <fastest_us> <batches>"
 *     check                             check every impl's result per case -> "bad ..."
 *     rounds <n>                        n interleaved rounds -> "s <case> <impl> <us>"
 *     quit
 *   every command's answer ends with a line "ok".
 *
 * One sample = the MIN over `batches` batch means, a batch being `reps` back-to-back calls
 * with fresh inputs before it (untimed) and a cheap input perturbation between calls
 * (rl_case_run). reps is calibrated once per case on the fastest impl so every batch lasts
 * at least min_us; batches = how many batches of the slowest impl fit in budget_us
 * (1..max_batches), so a slow reference never multiplies the cost of a round.
 * Both counts are per case and the SAME for every impl, so the min is equally biased for
 * all of them: on a shared host preemption only ever adds time, and the min of a few short
 * batches drops it, while slow cases (one call > budget) cost a single batch. Within each
 * round and case the impl order is shuffled, so drift and position effects hit all alike.
 * The default clock is the thread's CPU time: the kernel is single-threaded, and on a
 * shared host the time it spends descheduled is not its cost. Cache and memory-bandwidth
 * interference from neighbours still shows, which is what the paired rounds absorb.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_harness.h"

#define RL_MAX_CASES 64
#define RL_MAX_PARAMS 16
#define RL_MAX_IMPLS 64

typedef struct {
    char name[64];
    void *st;
    long reps;
    long batches;
} rl_case;

static rl_case cases[RL_MAX_CASES];
static int n_cases = 0;
static rl_rng rng = {0x5EEDull};
static double (*clock_us)(void) = rl_cpu_us;

static double time_batch(rl_case *c, rl_fnptr fn, long reps) {
    rl_case_refresh(c->st, &rng);
    double t0 = clock_us();
    for (long k = 0; k < reps; k++) rl_case_run(c->st, fn, k);
    double t1 = clock_us();
    return (t1 - t0) / (double)reps;
}

static void cmd_calibrate(double min_sample_us, long warm, double budget_us, long max_batches) {
    for (int ci = 0; ci < n_cases; ci++) {
        rl_case *c = &cases[ci];
        double fastest = 1e300, slowest = 0.0;
        for (int i = 0; i < rl_n_impls; i++) {
            for (long w = 0; w < warm; w++) time_batch(c, rl_impl_fns[i], 1);
            /* grow the batch until it is long enough to time, then take its mean */
            long reps = 1;
            double per = time_batch(c, rl_impl_fns[i], reps);
            while (per * (double)reps < min_sample_us / 4 && reps < (1L << 24)) {
                reps *= 4;
                per = time_batch(c, rl_impl_fns[i], reps);
            }
            if (per < fastest) fastest = per;
            if (per > slowest) slowest = per;
        }
        if (fastest <= 0) fastest = 1e-3;
        long reps = (long)(min_sample_us / fastest) + 1;
        if (reps < 1) reps = 1;
        if (reps > (1L << 24)) reps = 1L << 24;
        c->reps = reps;
        /* as many batches as the SLOWEST impl fits in the budget: same count for all */
        long batches = (long)(budget_us / ((double)reps * slowest));
        if (batches > max_batches) batches = max_batches;
        if (batches < 1) batches = 1;
        c->batches = batches;
        printf("reps %d %ld %.6g %ld\n", ci, reps, fastest, batches);
    }
}

static void cmd_check(void) {
    char msg[512];
    for (int ci = 0; ci < n_cases; ci++) {
        for (int i = 0; i < rl_n_impls; i++) {
            msg[0] = 0;
            if (rl_case_check(cases[ci].st, rl_impl_fns[i], &rng, msg, sizeof msg) != 0) {
                for (char *p = msg; *p; p++) if (*p == '\n') *p = ' ';
                printf("bad %d %d %s\n", i, ci, msg);
            }
        }
    }
}

static void cmd_rounds(long n) {
    int order[RL_MAX_IMPLS];
    for (long r = 0; r < n; r++) {
        for (int ci = 0; ci < n_cases; ci++) {
            for (int i = 0; i < rl_n_impls; i++) order[i] = i;
            for (int i = rl_n_impls - 1; i > 0; i--) {
                int j = (int)rl_below(&rng, (size_t)i + 1);
                int t = order[i]; order[i] = order[j]; order[j] = t;
            }
            for (int k = 0; k < rl_n_impls; k++) {
                int i = order[k];
                double us = time_batch(&cases[ci], rl_impl_fns[i], cases[ci].reps);
                for (long b = 1; b < cases[ci].batches; b++) {
                    double again = time_batch(&cases[ci], rl_impl_fns[i], cases[ci].reps);
                    if (again < us) us = again;
                }
                printf("s %d %d %.6g\n", ci, i, us);
            }
        }
    }
}

static int bench_loop(void) {
    char line[4096];
    if (rl_n_impls > RL_MAX_IMPLS) {
        fprintf(stderr, "too many implementations\n");
        return 2;
    }
    while (fgets(line, sizeof line, stdin)) {
        char *save = NULL;
        char *cmd = strtok_r(line, " \t\r\n", &save);
        if (!cmd) continue;
        if (!strcmp(cmd, "quit")) {
            printf("ok\n");
            fflush(stdout);
            return 0;
        } else if (!strcmp(cmd, "seed")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            rng.s = a ? strtoull(a, NULL, 10) : 0;
        } else if (!strcmp(cmd, "clock")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            clock_us = (a && !strcmp(a, "wall")) ? rl_now_us : rl_cpu_us;
        } else if (!strcmp(cmd, "case")) {
            char *name = strtok_r(NULL, " \t\r\n", &save);
            long params[RL_MAX_PARAMS];
            int np = 0;
            char *a;
            while (np < RL_MAX_PARAMS && (a = strtok_r(NULL, " \t\r\n", &save)))
                params[np++] = strtol(a, NULL, 10);
            if (!name || n_cases >= RL_MAX_CASES) {
                fprintf(stderr, "bad case command\n");
                return 2;
            }
            rl_case *c = &cases[n_cases++];
            snprintf(c->name, sizeof c->name, "%s", name);
            c->st = rl_case_new(params, np, &rng);
            c->reps = 1;
            c->batches = 1;
        } else if (!strcmp(cmd, "calibrate")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            char *b = strtok_r(NULL, " \t\r\n", &save);
            char *d = strtok_r(NULL, " \t\r\n", &save);
            char *e = strtok_r(NULL, " \t\r\n", &save);
            cmd_calibrate(a ? strtod(a, NULL) : 1000.0, b ? strtol(b, NULL, 10) : 2,
                          d ? strtod(d, NULL) : 0.0, e ? strtol(e, NULL, 10) : 1);
        } else if (!strcmp(cmd, "check")) {
            cmd_check();
        } else if (!strcmp(cmd, "rounds")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            cmd_rounds(a ? strtol(a, NULL, 10) : 1);
        } else {
            fprintf(stderr, "unknown command %s\n", cmd);
            return 2;
        }
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "validate")) {
        int only = argc >= 4 ? atoi(argv[3]) : -1;
        for (int i = 0; i < rl_n_impls; i++) {
            if (only >= 0 && i != only) continue;
            rl_rng vr = {argc >= 3 ? strtoull(argv[2], NULL, 10) : 1};
            printf("RLIMPL %s\n", rl_impl_names[i]);
            fflush(stdout);
            rl_validate(rl_impl_fns[i], &vr);
        }
        printf("RLOK\n");
        fflush(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "bench")) return bench_loop();
    fprintf(stderr, "usage: %s validate <seed> | bench\n", argv[0]);
    return 2;
}
