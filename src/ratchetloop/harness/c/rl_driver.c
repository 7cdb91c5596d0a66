/* ratchetloop driver: the trusted half of a C evaluation. It holds no implementation.
 *
 *   rl_driver validate <seed> <worker>   adversarial validation (the experiment's
 *                                        rl_validate) of one worker, usually the
 *                                        sanitizer build of the candidate; prints RLINFO
 *                                        lines, then RLOK, RLFAIL <check> <message> or
 *                                        RLDEAD <kind> <message> (the worker died)
 *   rl_driver bench                      the timing protocol on stdin/stdout:
 *     impl <name> <worker>               start a worker (index 0 = the candidate)
 *     seed <u64>                         reseed the input and order RNGs
 *     clock cpu|wall                     time a batch by the worker's process CPU clock
 *                                        (default) or the driver's monotonic clock
 *     case <name> <p0> <p1> ...          add a case (integer params, experiment's order)
 *     calibrate <min_us> <warm> <budget_us> <max_batches>
 *                                        -> "ipc <us>", then per case
 *                                           "reps <case> <reps> <fastest_us> <batches>"
 *     check                              one checked call per case and implementation
 *     rounds <n>                         n interleaved rounds -> "s <case> <impl> <us>"
 *     quit
 *   every command's answer ends with "ok"; a fault ends it early with
 *   "fail <impl> <kind> <message>" before the "ok".
 *
 * Why it can be trusted with the verdict: it runs none of the implementations' code
 * (each runs in its own worker process under seccomp, see rl_worker.c), it is not
 * dumpable (no same-uid process can ptrace it or open /proc/<pid>/mem or fd/), and a
 * worker holds nothing of it: not its stdout, not its memory, only its own arena.
 *
 * What it does so a worker cannot lie about time or results:
 *   - every call of a batch gets its own input and output slot, inputs copied from the
 *     driver's private trusted copies (fresh for every batch), outputs poisoned (0xFF)
 *     and guarded; after the batch EVERY call is checked by the experiment's
 *     rl_case_check against the trusted inputs, on elements chosen by an RNG seeded from
 *     getrandom() that the worker cannot see; read-only inputs are spot-checked after
 *     every batch and compared in full after every `rounds` command;
 *   - time is taken from outside: the worker's process CPU clock (it has no threads or
 *     children: seccomp), charged continuously, so CPU spent anywhere (before a batch,
 *     after the reply) lands in a batch; a worker that uses CPU while another one is
 *     being timed fails ("ran outside its timed batch").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rl_harness.h"
#include "rl_io.h"

#define MAX_WORKERS 64
#define MAX_CASES 64
#define MAX_PARAMS 16
#define GUARD 64
#define CANARY 0xA5
#define POISON 0xFF
#define SLOT_BYTES_CAP ((size_t)32 << 20) /* per case and worker: per-call buffers */
#define GROW_STEP ((size_t)16 << 20)       /* arenas grow in steps (memfds obey RLIMIT_FSIZE) */
#define SPOT_CHECKS 64                      /* read-only input words spot-checked per batch */
#define IDLE_TOLERANCE_US 200.0
#define MSG 1024

enum { PHASE_TIME, PHASE_FULL };

/* ------------------------------------------------------------------ arena layout
 * One layout of offsets shared by every worker's arena: the same allocation is at the
 * same offset in each, so one recorded call table serves all workers. */

typedef struct {
    size_t start, data, bytes, end;
    int live;
} alloc_rec;

static size_t arena_size = (size_t)1 << 30;
static alloc_rec *allocs;
static size_t n_allocs, cap_allocs;
static size_t layout_top = RL_TABLE_OFFSET + (size_t)RL_TABLE_CALLS * sizeof(rl_call);

static void die(const char *what) {
    printf("fail -1 harness_error %s\nok\n", what);
    fflush(stdout);
    exit(2);
}

static void grow_arenas(size_t top);

static size_t layout_alloc(size_t bytes, size_t misalign, size_t front, size_t back) {
    size_t start = (layout_top + 63) & ~(size_t)63;
    size_t lead = ((front + 63) / 64) * 64 + (misalign % 64);
    size_t end = start + lead + bytes + back;
    if (end > arena_size) die("the shared arena is full (a case is too large)");
    grow_arenas(end);
    if (n_allocs == cap_allocs) {
        cap_allocs = cap_allocs ? 2 * cap_allocs : 256;
        allocs = realloc(allocs, cap_allocs * sizeof *allocs);
        if (!allocs) die("out of memory");
    }
    allocs[n_allocs++] = (alloc_rec){start, start + lead, bytes, end, 1};
    layout_top = end;
    return start + lead;
}

static void layout_free(size_t data) {
    for (size_t i = n_allocs; i-- > 0;)
        if (allocs[i].data == data) allocs[i].live = 0;
    while (n_allocs && !allocs[n_allocs - 1].live) layout_top = allocs[--n_allocs].start;
    if (!n_allocs) layout_top = RL_TABLE_OFFSET + (size_t)RL_TABLE_CALLS * sizeof(rl_call);
}

static const alloc_rec *layout_find(size_t off) {
    for (size_t i = n_allocs; i-- > 0;)
        if (allocs[i].live && off >= allocs[i].start && off < allocs[i].end) return &allocs[i];
    return NULL;
}

/* ------------------------------------------------------------------ workers */

typedef struct {
    char name[128];
    pid_t pid;
    int cmd_fd, reply_fd, arena_fd;
    unsigned char *arena;
    clockid_t clk;
    double last_cpu;
    uint32_t seq;
    char log[512];
    int alive;
} worker;

static worker workers[MAX_WORKERS];
static int n_workers;
static size_t arena_file = GROW_STEP; /* bytes of every arena's memfd (the mapping is larger) */

static void grow_arenas(size_t top) {
    if (top <= arena_file) return;
    size_t want = (top + GROW_STEP - 1) / GROW_STEP * GROW_STEP;
    if (want > arena_size) want = arena_size;
    for (int i = 0; i < n_workers; i++)
        if (ftruncate(workers[i].arena_fd, (off_t)want) != 0)
            die("cannot grow the shared arena (file-size limit?): a case is too large");
    arena_file = want;
}
static worker *cur; /* the worker rl_buf_alloc and the stub address (validation) */

static int fail_impl = -1;
static char fail_kind[32], fail_msg[MSG];

static int fail(int impl, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(int impl, const char *kind, const char *fmt, ...) {
    va_list ap;
    fail_impl = impl;
    snprintf(fail_kind, sizeof fail_kind, "%s", kind);
    va_start(ap, fmt);
    vsnprintf(fail_msg, sizeof fail_msg, fmt, ap);
    va_end(ap);
    for (char *p = fail_msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    return -1;
}

static int index_of(const worker *w) { return (int)(w - workers); }

static double cpu_us(const worker *w) {
    struct timespec ts;
    if (clock_gettime(w->clk, &ts) != 0) return -1.0;
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

#define S(x) {__NR_##x, #x}
static const struct {
    int nr;
    const char *name;
} SYSCALLS[] = {
    S(clone), S(clone3), S(execve), S(execveat), S(kill), S(tkill), S(tgkill),
    S(rt_sigqueueinfo), S(rt_tgsigqueueinfo), S(rt_sigaction), S(ptrace),
    S(process_vm_readv), S(process_vm_writev), S(socket), S(socketpair), S(connect),
    S(bind), S(listen), S(accept), S(accept4), S(sendto), S(sendmsg), S(recvfrom),
    S(recvmsg), S(setitimer), S(timer_create), S(timer_settime), S(timerfd_create),
    S(timerfd_settime), S(sched_setaffinity), S(sched_setscheduler), S(sched_setattr),
    S(setpriority), S(io_uring_setup), S(io_uring_enter), S(io_uring_register), S(bpf),
    S(perf_event_open), S(userfaultfd), S(mount), S(umount2), S(unshare), S(setns),
    S(chroot), S(pivot_root), S(memfd_create), S(pkey_mprotect), S(seccomp), S(personality),
    S(keyctl), S(add_key), S(request_key), S(pidfd_open), S(pidfd_send_signal),
    S(pidfd_getfd), S(unlinkat), S(renameat), S(renameat2), S(linkat), S(symlinkat),
    S(mkdirat), S(fchmodat), S(fchownat), S(truncate), S(ftruncate), S(fchmod), S(fchown),
    S(mknodat), S(openat), S(openat2), S(readlinkat), S(prctl), S(ioctl), S(mmap),
    S(mprotect),
#ifdef __NR_fork
    S(fork), S(vfork), S(alarm), S(unlink), S(rename), S(link), S(symlink), S(mkdir),
    S(rmdir), S(chmod), S(chown), S(lchown), S(mknod), S(open), S(creat), S(readlink),
#endif
};
#undef S

static const char *syscall_name(int nr) {
    for (size_t i = 0; i < sizeof SYSCALLS / sizeof SYSCALLS[0]; i++)
        if (SYSCALLS[i].nr == nr) return SYSCALLS[i].name;
    return "unknown";
}

/* The number the worker's SIGSYS handler wrote last ("RLSYS <nr>"), or -1. */
static int refused_syscall(const worker *w) {
    char buf[4096];
    int fd = open(w->log, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = size > (off_t)sizeof buf - 1 ? size - (off_t)sizeof buf + 1 : 0;
    ssize_t got = pread(fd, buf, sizeof buf - 1, from);
    close(fd);
    if (got <= 0) return -1;
    buf[got] = 0;
    char *hit = NULL, *p = buf;
    while ((p = strstr(p, "RLSYS ")) != NULL) hit = p++;
    return hit ? atoi(hit + 6) : -1;
}

/* The worker is gone: reap it and say how it died. */
static int worker_died(worker *w, const char *during) {
    int status = 0;
    if (w->alive) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, &status, 0);
        w->alive = 0;
    }
    int i = index_of(w);
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if ((WIFEXITED(status) && code == RL_EXIT_SYSCALL) || sig == SIGSYS) {
        int nr = refused_syscall(w);
        if (nr >= 0)
            return fail(i, "integrity", "forbidden system call `%s` (%d) during %s: a kernel "
                        "may only compute (no threads, processes, signals, timers, files or "
                        "sockets)", syscall_name(nr), nr, during);
        return fail(i, "integrity", "forbidden system call (killed by SIGSYS) during %s",
                    during);
    }
    if (WIFEXITED(status) && (code == 23 || code == 24))
        return fail(i, "sanitizer", "sanitizer report during %s (exit %d)", during, code);
    if (sig)
        return fail(i, "crash", "killed by signal %d (SIG%s, %s) during %s", sig,
                    sigabbrev_np(sig) ? sigabbrev_np(sig) : "?", strsignal(sig), during);
    return fail(i, "crash", "exited with status %d during %s", code, during);
}

/* Read one reply within `timeout_s`: 1 = got it, 0 = timed out, -1 = the worker is gone. */
static int read_reply(worker *w, rl_reply *rep, double timeout_s) {
    char *c = (char *)rep;
    size_t need = sizeof *rep;
    double deadline = rl_now_us() + timeout_s * 1e6;
    while (need) {
        double left = (deadline - rl_now_us()) / 1000.0;
        if (left <= 0) return 0;
        struct pollfd pfd = {w->reply_fd, POLLIN, 0};
        int r = poll(&pfd, 1, left > 1e6 ? 1000000 : (int)left + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        ssize_t got = read(w->reply_fd, c, need);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        c += got;
        need -= (size_t)got;
    }
    return 1;
}

static double call_timeout_s = 120.0;

/* Run calls[first .. first+count) in worker w; 0 on success, else fail_* is set. */
static int run_calls(worker *w, int64_t first, int64_t count, const char *during) {
    rl_cmd cmd = {RL_OP_CALLS, ++w->seq, first, count};
    if (!w->alive || rl_write_full(w->cmd_fd, &cmd, sizeof cmd) != 0) return worker_died(w, during);
    rl_reply rep;
    int r = read_reply(w, &rep, call_timeout_s);
    if (r == 0) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
        w->alive = 0;
        return fail(index_of(w), "timeout", "no answer within %.0f s during %s",
                    call_timeout_s, during);
    }
    if (r < 0) return worker_died(w, during);
    if (rep.seq != cmd.seq || rep.status != 0 || rep.done != count)
        return fail(index_of(w), "integrity", "the worker broke the call protocol during %s "
                    "(reply %u/%u/%lld for command %u of %lld calls)", during, rep.seq,
                    rep.status, (long long)rep.done, cmd.seq, (long long)count);
    return 0;
}

static void worker_env(char **env, size_t cap, int sanitizer) {
    static char asan[1024], ubsan[512];
    size_t n = 0;
    if (sanitizer) {
        const char *a = getenv("ASAN_OPTIONS"), *u = getenv("UBSAN_OPTIONS");
        if (a && n + 1 < cap) {
            snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s", a);
            env[n++] = asan;
        }
        if (u && n + 1 < cap) {
            snprintf(ubsan, sizeof ubsan, "UBSAN_OPTIONS=%s", u);
            env[n++] = ubsan;
        }
    }
    env[n] = NULL;
}

/* Start a worker: a fresh arena, two pipes, a log file; wait for its "ready". */
static int spawn(const char *name, const char *path, int sanitizer) {
    if (n_workers >= MAX_WORKERS) die("too many implementations");
    worker *w = &workers[n_workers];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", name);
    snprintf(w->log, sizeof w->log, "%s.log", path);
    int arena_fd = memfd_create("rl-arena", MFD_CLOEXEC);
    if (arena_fd < 0 || ftruncate(arena_fd, (off_t)arena_file) != 0) die("memfd_create failed");
    w->arena = mmap(NULL, arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, arena_fd, 0);
    if (w->arena == MAP_FAILED) die("mmap of the arena failed");
    int cmd[2], rep[2];
    if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(rep, O_CLOEXEC) != 0) die("pipe failed");
    int log_fd = open(w->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (log_fd < 0 || null_fd < 0) die("cannot open the worker's log");
    char size_arg[32];
    snprintf(size_arg, sizeof size_arg, "%zu", arena_size);
    char *argv[] = {(char *)path, size_arg, NULL};
    char *env[4];
    worker_env(env, 4, sanitizer);
    pid_t parent = getpid();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) die("fork failed");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        /* exactly fds 0-5: first move every source above them (a source may sit on a
         * target number), then dup2 down, which clears close-on-exec on the copies */
        int src[6] = {null_fd, null_fd, log_fd, cmd[0], rep[1], arena_fd};
        for (int k = 0; k < 6; k++)
            if ((src[k] = fcntl(src[k], F_DUPFD_CLOEXEC, 64)) < 0) _exit(1);
        for (int k = 0; k < 6; k++)
            if (dup2(src[k], k) != k) _exit(1);
        syscall(SYS_close_range, RL_FD_ARENA + 1, ~0U, 0);
        execve(path, argv, env);
        _exit(127);
    }
    close(cmd[0]);
    close(rep[1]);
    close(log_fd);
    close(null_fd);
    w->arena_fd = arena_fd;
    w->pid = pid;
    w->cmd_fd = cmd[1];
    w->reply_fd = rep[0];
    w->alive = 1;
    n_workers++;
    if (clock_getcpuclockid(pid, &w->clk) != 0) die("clock_getcpuclockid failed");
    rl_reply ready;
    int r = read_reply(w, &ready, 60.0);
    if (r <= 0 || ready.seq != 0) {
        if (r == 0) kill(pid, SIGKILL);
        return worker_died(w, "start-up");
    }
    w->last_cpu = cpu_us(w);
    return 0;
}

static void stop_workers(void) {
    for (int i = 0; i < n_workers; i++) {
        worker *w = &workers[i];
        if (!w->alive) continue;
        rl_cmd quit = {RL_OP_QUIT, ++w->seq, 0, 0};
        rl_write_full(w->cmd_fd, &quit, sizeof quit);
        close(w->cmd_fd);
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
        w->alive = 0;
    }
}

/* ------------------------------------------------------------------ rl_buf (arena) */

void *rl_buf_alloc(rl_buf *b, size_t bytes, size_t misalign, size_t front, size_t back) {
    if (!cur) die("rl_buf_alloc outside a worker's arena");
    size_t data = layout_alloc(bytes, misalign, front, back);
    const alloc_rec *rec = layout_find(data);
    b->base = cur->arena + rec->start;
    b->data = cur->arena + data;
    b->bytes = bytes;
    b->front = data - rec->start;
    b->back = back;
    memset(b->base, CANARY, b->front);
    memset(b->data + bytes, CANARY, back);
    return b->data;
}

int rl_buf_guards_ok(const rl_buf *b, long *offset) {
    for (size_t i = 0; i < b->front; i++) {
        if (b->base[i] != CANARY) {
            if (offset) *offset = (long)i - (long)b->front;
            return 0;
        }
    }
    for (size_t i = 0; i < b->back; i++) {
        if (b->data[b->bytes + i] != CANARY) {
            if (offset) *offset = (long)(b->bytes + i);
            return 0;
        }
    }
    return 1;
}

void rl_buf_free(rl_buf *b) {
    if (cur && b->data) layout_free((size_t)(b->data - cur->arena));
    b->base = b->data = NULL;
}

/* ------------------------------------------------------------------ the call stub */

static rl_call *record_into; /* non-NULL: the stub records instead of calling */
static int recorded;

void rl_call_ptr(rl_call *c, int i, const void *p) {
    if (!p) {
        c->a[i] = -1;
        c->size[i] = 0;
        return;
    }
    const unsigned char *q = p;
    if (!cur || q < cur->arena || q >= cur->arena + arena_size)
        die("the driver passed a pointer that is not in the arena (use rl_buf_alloc)");
    size_t off = (size_t)(q - cur->arena);
    const alloc_rec *rec = layout_find(off);
    c->a[i] = (int64_t)off;
    c->size[i] = rec && off <= rec->data + rec->bytes ? (int64_t)(rec->data + rec->bytes - off)
                                                      : 0;
}

void rl_call_int(rl_call *c, int i, int64_t v) {
    c->a[i] = v;
    c->size[i] = 0;
}

void rl_call_f64(rl_call *c, int i, double v) {
    memcpy(&c->a[i], &v, sizeof v);
    c->size[i] = 0;
}

void rl_remote(rl_call *c) {
    if (record_into) {
        *record_into = *c;
        recorded++;
        return;
    }
    memcpy(cur->arena + RL_TABLE_OFFSET, c, sizeof *c);
    if (run_calls(cur, 0, 1, "validation") != 0) {
        printf("RLDEAD %s %s\n", fail_kind, fail_msg);
        fflush(stdout);
        stop_workers();
        exit(4);
    }
}

/* ------------------------------------------------------------------ cases */

typedef struct {
    size_t bytes;
    int flags;
    size_t off;    /* case-level buffers: data offset in the layout */
    void *truth;   /* case-level inputs: the trusted copy */
} bufdecl;

struct rl_case {
    char name[64];
    void *user;
    int nbuf;
    bufdecl buf[RL_MAX_ARGS];
    long reps, batches, nslots, cap_slots;
    size_t *slot_off;   /* [slot][buf] data offsets of per-call buffers */
    void **slot_truth;  /* [slot][buf] trusted copies of per-call inputs */
    rl_call *calls;     /* [slot] the recorded call */
    size_t dirty_lo[MAX_WORKERS][RL_MAX_ARGS], dirty_hi[MAX_WORKERS][RL_MAX_ARGS];
};

static rl_case *cases[MAX_CASES];
static int n_cases;
static rl_rng in_rng = {0x5EEDull}, order_rng = {0x0DDull}, chk_rng;
static int use_wall_clock;

int rl_case_buffer(rl_case *c, size_t bytes, int flags) {
    if (c->nbuf >= RL_MAX_ARGS) die("too many buffers in one case");
    c->buf[c->nbuf] = (bufdecl){bytes, flags, 0, NULL};
    return c->nbuf++;
}

void rl_case_set_user(rl_case *c, void *user) { c->user = user; }
void *rl_case_user(const rl_case *c) { return c->user; }

static int is_input(const bufdecl *b) { return b->bytes && !(b->flags & RL_OUTPUT); }

static void mark_dirty(rl_case *c, int i, size_t lo, size_t hi) {
    for (int w = 0; w < MAX_WORKERS; w++) {
        if (c->dirty_hi[w][i] <= c->dirty_lo[w][i]) {
            c->dirty_lo[w][i] = lo;
            c->dirty_hi[w][i] = hi;
        } else {
            if (lo < c->dirty_lo[w][i]) c->dirty_lo[w][i] = lo;
            if (hi > c->dirty_hi[w][i]) c->dirty_hi[w][i] = hi;
        }
    }
}

static void add_case(const char *name, const long *params, int np) {
    if (n_cases >= MAX_CASES || n_workers == 0) die("bad case command (impls first)");
    rl_case *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    snprintf(c->name, sizeof c->name, "%s", name);
    rl_case_setup(c, params, np);
    size_t per_call = 0;
    for (int i = 0; i < c->nbuf; i++) {
        bufdecl *b = &c->buf[i];
        if (!b->bytes) continue;
        if (b->flags & RL_PER_CALL) {
            per_call += b->bytes + (b->flags & RL_OUTPUT ? 2 * GUARD : 0) + 64;
        } else if (b->flags & RL_OUTPUT) {
            die("an output buffer must be RL_PER_CALL");
        } else {
            b->off = layout_alloc(b->bytes, 0, 0, 0);
            b->truth = malloc(b->bytes);
            if (!b->truth) die("out of memory");
            size_t lo = 0, hi = b->bytes;
            rl_case_fill(c, i, b->truth, b->bytes, &in_rng, 1, &lo, &hi);
            mark_dirty(c, i, 0, b->bytes);
        }
    }
    c->cap_slots = per_call ? (long)(SLOT_BYTES_CAP / per_call) : RL_TABLE_CALLS;
    if (c->cap_slots > RL_TABLE_CALLS) c->cap_slots = RL_TABLE_CALLS;
    if (c->cap_slots < 1) c->cap_slots = 1;
    c->slot_off = calloc((size_t)c->cap_slots * RL_MAX_ARGS, sizeof *c->slot_off);
    c->slot_truth = calloc((size_t)c->cap_slots * RL_MAX_ARGS, sizeof *c->slot_truth);
    c->calls = calloc((size_t)c->cap_slots, sizeof *c->calls);
    if (!c->slot_off || !c->slot_truth || !c->calls) die("out of memory");
    c->reps = c->batches = 1;
    cases[n_cases++] = c;
}

/* Give the case `n` call slots (same offsets in every arena) and record their calls. */
static void ensure_slots(rl_case *c, long n) {
    for (long s = c->nslots; s < n; s++) {
        void *ptrs[RL_MAX_ARGS] = {0};
        for (int i = 0; i < c->nbuf; i++) {
            bufdecl *b = &c->buf[i];
            if (!b->bytes) continue;
            if (b->flags & RL_PER_CALL) {
                int out = b->flags & RL_OUTPUT;
                size_t off = layout_alloc(b->bytes, 0, out ? GUARD : 0, out ? GUARD : 0);
                c->slot_off[s * RL_MAX_ARGS + i] = off;
                if (!out) {
                    c->slot_truth[s * RL_MAX_ARGS + i] = malloc(b->bytes);
                    if (!c->slot_truth[s * RL_MAX_ARGS + i]) die("out of memory");
                }
                ptrs[i] = workers[0].arena + off;
            } else {
                ptrs[i] = workers[0].arena + b->off;
            }
        }
        cur = &workers[0];
        record_into = &c->calls[s];
        recorded = 0;
        rl_case_call(c, ptrs, rl_stub_fn);
        record_into = NULL;
        if (recorded != 1) die("rl_case_call must call fn exactly once");
        c->nslots = s + 1;
    }
}

/* New trusted inputs for the next batch: per-call inputs of slots [0, n) afresh, and a
 * small change to each case-level input (so nothing derived from it stays valid). */
static void refresh_truth(rl_case *c, long n) {
    ensure_slots(c, n);
    for (int i = 0; i < c->nbuf; i++) {
        bufdecl *b = &c->buf[i];
        if (!is_input(b)) continue;
        if (b->flags & RL_PER_CALL) {
            for (long s = 0; s < n; s++) {
                size_t lo = 0, hi = b->bytes;
                rl_case_fill(c, i, c->slot_truth[s * RL_MAX_ARGS + i], b->bytes, &in_rng, 1,
                             &lo, &hi);
            }
        } else {
            size_t lo = 0, hi = 0;
            rl_case_fill(c, i, b->truth, b->bytes, &in_rng, 0, &lo, &hi);
            if (hi > b->bytes) hi = b->bytes;
            if (lo < hi) mark_dirty(c, i, lo, hi);
        }
    }
}

static volatile unsigned char sink;

/* Put the trusted inputs of slots [0, n) into worker w's arena, poison and guard the
 * outputs, write the call table, and bring the inputs into cache. Spot-checks that the
 * worker left its read-only case-level inputs alone. */
static int publish(worker *w, rl_case *c, long n) {
    int wi = index_of(w);
    unsigned char *A = w->arena;
    unsigned char acc = 0;
    for (int i = 0; i < c->nbuf; i++) {
        bufdecl *b = &c->buf[i];
        if (!b->bytes) continue;
        if (b->flags & RL_PER_CALL) {
            for (long s = 0; s < n; s++) {
                unsigned char *p = A + c->slot_off[s * RL_MAX_ARGS + i];
                if (b->flags & RL_OUTPUT) {
                    memset(p - GUARD, CANARY, GUARD);
                    memset(p, POISON, b->bytes);
                    memset(p + b->bytes, CANARY, GUARD);
                } else {
                    memcpy(p, c->slot_truth[s * RL_MAX_ARGS + i], b->bytes);
                }
            }
        } else {
            size_t lo = c->dirty_lo[wi][i], hi = c->dirty_hi[wi][i];
            if (lo < hi) memcpy(A + b->off + lo, (unsigned char *)b->truth + lo, hi - lo);
            c->dirty_lo[wi][i] = c->dirty_hi[wi][i] = 0;
            for (int k = 0; k < SPOT_CHECKS && b->bytes >= 8; k++) {
                size_t at = rl_below(&chk_rng, b->bytes / 8) * 8;
                if (memcmp(A + b->off + at, (unsigned char *)b->truth + at, 8) != 0)
                    return fail(wi, "integrity", "input_modified: case %s: the implementation "
                                "changed read-only input %d (byte %zu) between calls",
                                c->name, i, at);
            }
            for (size_t k = 0; k < b->bytes; k += 64) acc ^= A[b->off + k];
        }
    }
    memcpy(A + RL_TABLE_OFFSET, c->calls, (size_t)n * sizeof(rl_call));
    sink = acc;
    return 0;
}

/* After a batch: every call's outputs guarded and checked against the trusted inputs. */
static int check_batch(worker *w, rl_case *c, long n, int phase) {
    int wi = index_of(w);
    char msg[MSG];
    for (long s = 0; s < n; s++) {
        const void *bufs[RL_MAX_ARGS] = {0};
        for (int i = 0; i < c->nbuf; i++) {
            bufdecl *b = &c->buf[i];
            if (!b->bytes) continue;
            if (b->flags & RL_OUTPUT) {
                unsigned char *p = w->arena + c->slot_off[s * RL_MAX_ARGS + i];
                for (size_t g = 0; g < GUARD; g++) {
                    if (p[-(long)GUARD + (long)g] != CANARY || p[b->bytes + g] != CANARY)
                        return fail(wi, phase == PHASE_TIME ? "integrity" : "validation_error",
                                    "guard_overwrite: case %s: call %ld of a batch wrote "
                                    "outside output %d", c->name, s, i);
                }
                bufs[i] = p;
            } else if (b->flags & RL_PER_CALL) {
                bufs[i] = c->slot_truth[s * RL_MAX_ARGS + i];
            } else {
                bufs[i] = b->truth;
            }
        }
        msg[0] = 0;
        if (rl_case_check(c, bufs, &chk_rng, phase == PHASE_FULL, msg, sizeof msg) != 0) {
            char *rest = strchr(msg, ' ');
            if (rest) *rest++ = 0;
            if (phase == PHASE_TIME)
                return fail(wi, "integrity", "%s on a timed call: benchmark case %s, call %ld "
                            "of %ld (the same build passed its checks before timing): %s",
                            msg, c->name, s + 1, n, rest ? rest : "");
            return fail(wi, "validation_error", "%s: benchmark case %s (optimised build): %s",
                        msg, c->name, rest ? rest : "");
        }
    }
    return 0;
}

/* Every other worker must have been idle since its last batch. */
static int idle_check(const worker *timed) {
    for (int i = 0; i < n_workers; i++) {
        worker *o = &workers[i];
        if (o == timed || !o->alive) continue;
        double now = cpu_us(o);
        if (now < 0) return worker_died(o, "an idle check");
        if (now - o->last_cpu > IDLE_TOLERANCE_US)
            return fail(i, "integrity", "ran outside its timed batch: %.0f us of CPU while it "
                        "should have been waiting for work", now - o->last_cpu);
    }
    return 0;
}

/* One batch of n calls by worker w on case c. Returns the batch time in us, or -1. */
static double run_batch(worker *w, rl_case *c, long n, int phase) {
    char during[128];
    snprintf(during, sizeof during, "case %s", c->name);
    if (publish(w, c, n) != 0 || idle_check(w) != 0) return -1.0;
    double wall0 = rl_now_us();
    if (run_calls(w, 0, n, during) != 0) return -1.0;
    double wall1 = rl_now_us(), after = cpu_us(w);
    if (after < 0) {
        worker_died(w, during);
        return -1.0;
    }
    double t = use_wall_clock ? wall1 - wall0 : after - w->last_cpu;
    w->last_cpu = after;
    if (idle_check(w) != 0 || check_batch(w, c, n, phase) != 0) return -1.0;
    return t;
}

/* The whole of every read-only case-level input, in every worker's arena. */
static int verify_inputs(void) {
    for (int ci = 0; ci < n_cases; ci++) {
        rl_case *c = cases[ci];
        for (int i = 0; i < c->nbuf; i++) {
            bufdecl *b = &c->buf[i];
            if (!is_input(b) || (b->flags & RL_PER_CALL)) continue;
            for (int wi = 0; wi < n_workers; wi++) {
                if (c->dirty_lo[wi][i] < c->dirty_hi[wi][i]) continue; /* not yet published */
                if (memcmp(workers[wi].arena + b->off, b->truth, b->bytes) != 0)
                    return fail(wi, "integrity", "input_modified: case %s: the implementation "
                                "changed read-only input %d", c->name, i);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ commands */

static void print_fail(void) {
    printf("fail %d %s %s\n", fail_impl, fail_kind, fail_msg);
}

static double ipc_cost(void) {
    double worst = 0.0;
    for (int i = 0; i < n_workers; i++) {
        worker *w = &workers[i];
        double best = 1e300;
        for (int k = 0; k < 5; k++) {
            if (idle_check(w) != 0 || run_calls(w, 0, 0, "calibration") != 0) return -1.0;
            double after = cpu_us(w);
            if (after - w->last_cpu < best) best = after - w->last_cpu;
            w->last_cpu = after;
        }
        if (best > worst) worst = best;
    }
    return worst;
}

static int cmd_calibrate(double min_us, long warm, double budget_us, long max_batches) {
    double ipc = ipc_cost();
    if (ipc < 0) return -1;
    printf("ipc %.6g\n", ipc);
    if (min_us < 100.0 * ipc) min_us = 100.0 * ipc; /* IPC stays under 1% of a batch */
    for (int ci = 0; ci < n_cases; ci++) {
        rl_case *c = cases[ci];
        double fastest = 1e300, slowest = 0.0;
        for (int i = 0; i < n_workers; i++) {
            for (long k = 0; k < warm; k++) {
                refresh_truth(c, 1);
                if (run_batch(&workers[i], c, 1, PHASE_TIME) < 0) return -1;
            }
            long reps = 1;
            refresh_truth(c, reps);
            double t = run_batch(&workers[i], c, reps, PHASE_TIME);
            if (t < 0) return -1;
            while (t < min_us / 4 && reps < c->cap_slots) {
                reps = reps * 4 < c->cap_slots ? reps * 4 : c->cap_slots;
                refresh_truth(c, reps);
                t = run_batch(&workers[i], c, reps, PHASE_TIME);
                if (t < 0) return -1;
            }
            double per = t / (double)reps;
            if (per < fastest) fastest = per;
            if (per > slowest) slowest = per;
        }
        if (fastest <= 0) fastest = 1e-3;
        long reps = (long)(min_us / fastest) + 1;
        if (reps > c->cap_slots) reps = c->cap_slots;
        if (reps < 1) reps = 1;
        c->reps = reps;
        long batches = (long)(budget_us / ((double)reps * slowest));
        if (batches > max_batches) batches = max_batches;
        if (batches < 1) batches = 1;
        c->batches = batches;
        ensure_slots(c, reps);
        printf("reps %d %ld %.6g %ld\n", ci, reps, fastest, batches);
    }
    return 0;
}

static int cmd_check(void) {
    for (int ci = 0; ci < n_cases; ci++) {
        refresh_truth(cases[ci], 1);
        for (int i = 0; i < n_workers; i++)
            if (run_batch(&workers[i], cases[ci], 1, PHASE_FULL) < 0) return -1;
    }
    return 0;
}

static int cmd_rounds(long n) {
    int order[MAX_WORKERS];
    double best[MAX_WORKERS];
    for (long r = 0; r < n; r++) {
        for (int ci = 0; ci < n_cases; ci++) {
            rl_case *c = cases[ci];
            for (int i = 0; i < n_workers; i++) best[i] = 1e300;
            for (long b = 0; b < c->batches; b++) {
                refresh_truth(c, c->reps);
                for (int i = 0; i < n_workers; i++) order[i] = i;
                for (int i = n_workers - 1; i > 0; i--) {
                    int j = (int)rl_below(&order_rng, (size_t)i + 1);
                    int t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
                for (int k = 0; k < n_workers; k++) {
                    int i = order[k];
                    double t = run_batch(&workers[i], c, c->reps, PHASE_TIME);
                    if (t < 0) return -1;
                    t /= (double)c->reps;
                    if (t < best[i]) best[i] = t;
                }
            }
            for (int i = 0; i < n_workers; i++) printf("s %d %d %.6g\n", ci, i, best[i]);
        }
    }
    return verify_inputs();
}

/* The driver and every worker on ONE CPU (the one we run on, unless eval.py already
 * chose): the kernel brings a process's CPU clock up to date when it stops running, so a
 * worker that shares our CPU is never mid-run when we read its clock (read from another
 * CPU while it runs, the clock lags by up to a scheduler tick). Workers inherit this and
 * their seccomp filter keeps them from changing it. */
static int pin_to_one_cpu(void) {
    cpu_set_t set;
    int cpu = sched_getcpu();
    if (cpu < 0) return -1;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

static int bench_loop(void) {
    char line[8192];
    if (pin_to_one_cpu() != 0) die("cannot pin the driver to one CPU");
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = (uint64_t)rl_now_us();
    chk_rng.s = seed;
    while (fgets(line, sizeof line, stdin)) {
        char *save = NULL;
        char *cmd = strtok_r(line, " \t\r\n", &save);
        int rc = 0;
        if (!cmd) continue;
        if (!strcmp(cmd, "quit")) {
            stop_workers();
            printf("ok\n");
            fflush(stdout);
            return 0;
        } else if (!strcmp(cmd, "impl")) {
            char *name = strtok_r(NULL, " \t\r\n", &save);
            char *path = strtok_r(NULL, "\r\n", &save);
            if (!name || !path || n_cases) die("bad impl command (before any case)");
            rc = spawn(name, path, 0);
        } else if (!strcmp(cmd, "seed")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            in_rng.s = a ? strtoull(a, NULL, 10) : 0;
            order_rng.s = in_rng.s ^ 0x0DD0DD0DDull;
        } else if (!strcmp(cmd, "clock")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            use_wall_clock = a && !strcmp(a, "wall");
        } else if (!strcmp(cmd, "case")) {
            char *name = strtok_r(NULL, " \t\r\n", &save);
            long params[MAX_PARAMS];
            int np = 0;
            char *a;
            while (np < MAX_PARAMS && (a = strtok_r(NULL, " \t\r\n", &save)))
                params[np++] = strtol(a, NULL, 10);
            if (!name) die("bad case command");
            add_case(name, params, np);
        } else if (!strcmp(cmd, "calibrate")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            char *b = strtok_r(NULL, " \t\r\n", &save);
            char *d = strtok_r(NULL, " \t\r\n", &save);
            char *e = strtok_r(NULL, " \t\r\n", &save);
            rc = cmd_calibrate(a ? strtod(a, NULL) : 1000.0, b ? strtol(b, NULL, 10) : 2,
                               d ? strtod(d, NULL) : 0.0, e ? strtol(e, NULL, 10) : 1);
        } else if (!strcmp(cmd, "check")) {
            rc = cmd_check();
        } else if (!strcmp(cmd, "rounds")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            rc = cmd_rounds(a ? strtol(a, NULL, 10) : 1);
        } else if (!strcmp(cmd, "timeout")) {
            char *a = strtok_r(NULL, " \t\r\n", &save);
            call_timeout_s = a ? strtod(a, NULL) : call_timeout_s;
        } else {
            die("unknown command");
        }
        if (rc != 0) print_fail();
        printf("ok\n");
        fflush(stdout);
    }
    stop_workers();
    return 0;
}

int main(int argc, char **argv) {
    /* no process of our uid may read our memory or descriptors, or ptrace us */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a too-large arena is an error message, not a death */
    const char *size = getenv("RL_ARENA_BYTES");
    if (size && strtoull(size, NULL, 10) >= ((size_t)64 << 20))
        arena_size = (size_t)strtoull(size, NULL, 10);
    if (argc >= 4 && !strcmp(argv[1], "validate")) {
        if (spawn("candidate", argv[3], 1) != 0) {
            printf("RLDEAD %s %s\n", fail_kind, fail_msg);
            fflush(stdout);
            return 4;
        }
        cur = &workers[0];
        rl_rng vr = {strtoull(argv[2], NULL, 10)};
        printf("RLIMPL %s\n", workers[0].name);
        fflush(stdout);
        rl_validate(rl_stub_fn, &vr);
        stop_workers();
        printf("RLOK\n");
        fflush(stdout);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "bench")) return bench_loop();
    fprintf(stderr, "usage: %s validate <seed> <worker> | bench\n", argv[0]);
    return 2;
}
