/* ratchetloop C harness: what an experiment's C driver may use and must provide.
 *
 * Two programs, two kinds of trust (see rl_driver.c and rl_worker.c):
 *
 *   rl_driver  trusted: the harness + the experiment's driver.c, and NO implementation.
 *              It makes the inputs, checks the outputs and takes every time.
 *   rl_worker  one process per implementation (candidate, incumbent, specialists): the
 *              implementation + a small loop that calls it on request, under a seccomp
 *              filter, pinned to one CPU, holding nothing but its own shared arena.
 *
 * Everything a call reads or writes lives in the worker's ARENA, a shared-memory region
 * mapped by both processes at different addresses (the driver passes offsets). The
 * driver's own memory (the true inputs, the RNG that picks what to check, the samples)
 * is out of the worker's reach.
 *
 * The experiment's driver.c provides the hooks at the end of this file. Its validation
 * code (rl_validate) is written as if it called the implementation directly: `fn` is a
 * stub with the target's prototype that runs the call in the worker and returns when it
 * is done. Buffers passed to it must come from rl_buf_alloc (they live in the arena).
 */
#ifndef RL_HARNESS_H
#define RL_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef void (*rl_fnptr)(void); /* cast to the experiment's own function type */

/* deterministic RNG (splitmix64) so a request seed reproduces inputs and orders */
typedef struct { uint64_t s; } rl_rng;
uint64_t rl_next(rl_rng *r);
double rl_unit(rl_rng *r); /* [0, 1) */
float rl_uniform(rl_rng *r, float lo, float hi);
void rl_fill_uniform(float *p, size_t n, rl_rng *r, float lo, float hi);
size_t rl_below(rl_rng *r, size_t n); /* [0, n) */
double rl_now_us(void);                /* CLOCK_MONOTONIC in microseconds */

/* Guarded buffers in the current worker's arena: `front`/`back` canary bytes around the
 * data, and the data pointer placed `misalign` bytes past a 64-byte boundary (so 4 ->
 * aligned to 4 but not to 8, 16, 32). In the sanitizer worker every pointer argument is
 * copied into a heap block that ends exactly where the data ends, so ASan flags
 * over-reads and over-writes. */
typedef struct {
    unsigned char *base;
    unsigned char *data;
    size_t bytes, front, back;
} rl_buf;
void *rl_buf_alloc(rl_buf *b, size_t bytes, size_t misalign, size_t front, size_t back);
/* 1 if every canary byte is intact; else 0 and *offset = signed byte offset of the first
 * damaged byte relative to the data start (negative = before it). */
int rl_buf_guards_ok(const rl_buf *b, long *offset);
void rl_buf_free(rl_buf *b);

/* Report a validation failure and exit(3): prints "RLFAIL <check> <message>" on stdout.
 * check is one word (wrong_result, guard_overwrite, stale_result, nan_inf, input_modified...);
 * Python reports it as kind "validation_error" with the message "<check>: <message>". */
void rl_fail(const char *kind, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));
/* Free-form progress line on stdout ("RLINFO ..."), e.g. which check is running. */
void rl_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- validation hook the experiment's driver.c must define ---- */
/* Full adversarial validation of fn (a stub that calls the implementation in its worker);
 * calls rl_fail() on the first problem. */
void rl_validate(rl_fnptr fn, rl_rng *rng);

/* ---- benchmark cases ----
 * A case declares its buffers once; the harness gives every call in a timed batch its own
 * copy of each per-call buffer, fills the inputs from the experiment's trusted copies,
 * poisons the outputs (0xFF bytes: NaN for floats), guards them, and after the batch
 * checks every call through rl_case_check against the trusted inputs. */
typedef struct rl_case rl_case; /* owned by the harness */
enum {
    RL_PER_CALL = 1, /* every call of a batch gets its own copy (else one per case) */
    RL_OUTPUT = 2,   /* written by the function: poisoned before, guarded, checked after */
};
/* Declare buffer number i (in declaration order, from 0); bytes == 0 passes NULL. */
int rl_case_buffer(rl_case *c, size_t bytes, int flags);
void rl_case_set_user(rl_case *c, void *user); /* the experiment's own case state */
void *rl_case_user(const rl_case *c);

/* ---- benchmark hooks the experiment's driver.c must define ---- */
/* Declare the buffers of one case from its integer parameters (order chosen by eval.py). */
void rl_case_setup(rl_case *c, const long *params, int nparams);
/* Write the trusted copy of input buffer `buf` (`bytes` long at `data`). fresh = 1: new
 * values throughout. fresh = 0 (case-level inputs only, between batches): change a little,
 * so nothing derived from the old values stays valid, and report the changed bytes as
 * [*lo, *hi); the harness copies them into every worker's arena. */
void rl_case_fill(rl_case *c, int buf, void *data, size_t bytes, rl_rng *rng, int fresh,
                  size_t *lo, size_t *hi);
/* Make one call of fn with these buffer pointers (index = buffer number). */
void rl_case_call(rl_case *c, void *const *bufs, rl_fnptr fn);
/* Check one call: bufs[i] is the trusted copy of input i and the worker's arena copy of
 * output i. Check that every output element was written, and verify against the
 * reference a random sample (rng is the driver's, unpredictable to the worker), or every
 * element when `full` (once per case and implementation, before timing).
 * 0 = fine, else write "<check> <message>" into msg. */
int rl_case_check(rl_case *c, const void *const *bufs, rl_rng *rng, int full, char *msg,
                  size_t cap);

/* ---- between the harness's pieces (not for experiments) ---- */
#define RL_MAX_ARGS 16
/* One call as the worker sees it: a[i] is an arena offset for a pointer argument (-1 =
 * NULL), the value of an integer argument, or the bits of a double for a floating one;
 * size[i] is the byte length of the pointed-to data (pointer arguments only). */
typedef struct {
    int64_t a[RL_MAX_ARGS];
    int64_t size[RL_MAX_ARGS];
} rl_call;
typedef struct { /* driver -> worker */
    uint32_t op, seq;
    int64_t first, count; /* run calls[first .. first + count) of the call table */
} rl_cmd;
typedef struct { /* worker -> driver */
    uint32_t seq, status;
    int64_t done;
} rl_reply;
enum { RL_OP_CALLS = 1, RL_OP_QUIT = 2 };
#define RL_TABLE_OFFSET 0         /* the call table starts the arena */
#define RL_TABLE_CALLS 16384      /* at most this many calls per batch */
#define RL_FD_CMD 3               /* worker fds */
#define RL_FD_REPLY 4
#define RL_FD_ARENA 5
#define RL_EXIT_SYSCALL 31        /* the worker's SIGSYS handler exits with this */

/* generated per build (rl_stub.c in the driver, rl_invoke.c in each worker) */
extern const rl_fnptr rl_stub_fn;
void rl_invoke(char *base, const rl_call *call);
/* used by the generated stub */
void rl_call_ptr(rl_call *c, int i, const void *p);
void rl_call_int(rl_call *c, int i, int64_t v);
void rl_call_f64(rl_call *c, int i, double v);
void rl_remote(rl_call *c);

#endif
