/* ratchetloop worker: runs ONE implementation on request, under a seccomp filter.
 *
 * Started by rl_driver (fork + exec) with exactly these descriptors: 0 and 1 /dev/null,
 * 2 a log file, 3 commands, 4 replies, 5 the shared arena (a memfd). Before any line of
 * the implementation can run (the object was checked to have no constructors), main():
 *   1. maps the arena and closes its descriptor;
 *   2. installs a SIGSYS handler that names the refused system call on stderr and exits
 *      with RL_EXIT_SYSCALL;
 *   3. installs the seccomp filter below, then says "ready".
 * Then it loops: read a command, call the implementation on calls[first..first+count) of
 * the call table in the arena, reply. It decides nothing and reports nothing but "done":
 * the driver checks the outputs in the arena and takes the time from outside (the CPU
 * clock of this process, which has no other thread or process to hide work in).
 *
 * The filter (x86_64 and aarch64): allowed are what computing needs (memory management,
 * clocks, futex, read, write to the reply pipe and the log only, exit). Trapped, so the
 * worker dies with an "integrity" verdict naming the call: new threads or processes,
 * exec, signals to anyone, signal handlers, timers, opening files, sockets, ptrace and
 * process_vm_*, changing its CPU affinity or priority, prctl, io_uring, bpf,
 * perf_event_open, userfaultfd, namespaces and mounts, memfd_create, executable memory.
 * Everything else fails with EPERM. In the sanitizer build (RL_SANITIZER) file-opening
 * calls fail with EACCES instead of trapping, because the sanitizer runtime itself tries
 * them while reporting; the verdict of that build never rests on timing.
 *
 * In the sanitizer build (RL_COPY_ARGS) every pointer argument is copied into a heap
 * block of exactly its size (keeping its misalignment) so AddressSanitizer sees the
 * bounds, and copied back after the call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "rl_harness.h"
#include "rl_io.h"

#if defined(__x86_64__)
#define RL_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define RL_ARCH AUDIT_ARCH_AARCH64
#else
#error "the worker's seccomp filter knows x86_64 and aarch64 only"
#endif

#define ALLOW SECCOMP_RET_ALLOW
#define TRAP SECCOMP_RET_TRAP
#define ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i)) /* little-endian */

static struct sock_filter prog[512];
static unsigned short n_prog;

static void emit(struct sock_filter f) {
    if (n_prog < sizeof prog / sizeof prog[0]) prog[n_prog] = f;
    n_prog++;
}

/* if nr == number: return action */
static void rule(int number, uint32_t action) {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)number, 0, 1));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, action));
}

/* if nr == number: allow when arg(i) has none of `bits`, else trap */
static void rule_no_bits(int number, int i, uint32_t bits) {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)number, 0, 4));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(i)));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, bits, 1, 0));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ALLOW));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, TRAP));
}

/* if nr == number: allow when arg(i) is fd a or fd b, else EBADF */
static void rule_fds(int number, int i, uint32_t a, uint32_t b) {
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)number, 0, 5));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(i)));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, a, 2, 0));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, b, 1, 0));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ERRNO(EBADF)));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ALLOW));
}

#ifdef RL_SANITIZER
#define FILE_ACTION ERRNO(EACCES)
#else
#define FILE_ACTION TRAP
#endif

static const int allowed[] = {
    __NR_read, __NR_close, __NR_fstat, __NR_lseek, __NR_munmap, __NR_mremap, __NR_madvise,
    __NR_brk, __NR_rt_sigreturn, __NR_rt_sigprocmask, __NR_sigaltstack, __NR_exit,
    __NR_exit_group, __NR_getpid, __NR_gettid, __NR_clock_gettime, __NR_clock_getres,
    __NR_gettimeofday, __NR_futex, __NR_sched_yield, __NR_getrandom, __NR_restart_syscall,
    __NR_getrusage, __NR_times, __NR_newfstatat,
#ifdef __NR_time
    __NR_time,
#endif
};

static const int trapped[] = {
    __NR_clone, __NR_execve, __NR_execveat, __NR_kill, __NR_tkill, __NR_tgkill,
    __NR_rt_sigqueueinfo, __NR_rt_tgsigqueueinfo, __NR_rt_sigaction, __NR_ptrace,
    __NR_process_vm_readv, __NR_process_vm_writev, __NR_socket, __NR_socketpair,
    __NR_connect, __NR_bind, __NR_listen, __NR_accept, __NR_accept4, __NR_sendto,
    __NR_sendmsg, __NR_recvfrom, __NR_recvmsg, __NR_setitimer, __NR_timer_create,
    __NR_timer_settime, __NR_timerfd_create, __NR_timerfd_settime, __NR_sched_setaffinity,
    __NR_sched_setscheduler, __NR_sched_setattr, __NR_setpriority, __NR_io_uring_setup,
    __NR_io_uring_enter, __NR_io_uring_register, __NR_bpf, __NR_perf_event_open,
    __NR_userfaultfd, __NR_mount, __NR_umount2, __NR_unshare, __NR_setns, __NR_chroot,
    __NR_pivot_root, __NR_memfd_create, __NR_pkey_mprotect, __NR_seccomp, __NR_personality,
    __NR_keyctl, __NR_add_key, __NR_request_key, __NR_pidfd_open, __NR_pidfd_send_signal,
    __NR_pidfd_getfd, __NR_unlinkat, __NR_renameat, __NR_renameat2, __NR_linkat,
    __NR_symlinkat, __NR_mkdirat, __NR_fchmodat, __NR_fchownat, __NR_truncate,
    __NR_ftruncate, __NR_fchmod, __NR_fchown, __NR_mknodat, __NR_clone3,
#ifdef __NR_fork
    __NR_fork, __NR_vfork, __NR_alarm, __NR_unlink, __NR_rename, __NR_link, __NR_symlink,
    __NR_mkdir, __NR_rmdir, __NR_chmod, __NR_chown, __NR_lchown, __NR_mknod,
#endif
};

static const int file_calls[] = {
    __NR_openat, __NR_openat2, __NR_readlinkat, __NR_prctl, __NR_ioctl, __NR_uname,
#ifdef __NR_open
    __NR_open, __NR_creat, __NR_readlink,
#endif
};

static int install_filter(void) {
    n_prog = 0;
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                      offsetof(struct seccomp_data, arch)));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, RL_ARCH, 1, 0));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                      offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* x32 system calls (bit 30) would bypass every rule below */
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) rule(allowed[i], ALLOW);
    rule_fds(__NR_write, 0, 2, RL_FD_REPLY);
    rule_no_bits(__NR_mmap, 2, PROT_EXEC);
    rule_no_bits(__NR_mprotect, 2, PROT_EXEC);
    for (size_t i = 0; i < sizeof trapped / sizeof trapped[0]; i++) rule(trapped[i], TRAP);
    for (size_t i = 0; i < sizeof file_calls / sizeof file_calls[0]; i++)
        rule(file_calls[i], FILE_ACTION);
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, ERRNO(EPERM)));
    if (n_prog > sizeof prog / sizeof prog[0]) return -1;
    struct sock_fprog fprog = {n_prog, prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog);
}

/* Async-signal-safe: name the refused call (the driver maps the number) and leave. */
static void on_sigsys(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    char buf[32] = "RLSYS ";
    int n = 6, nr = info->si_syscall;
    char digits[12];
    int k = 0;
    if (nr < 0) nr = 0;
    do {
        digits[k++] = (char)('0' + nr % 10);
        nr /= 10;
    } while (nr && k < 11);
    while (k) buf[n++] = digits[--k];
    buf[n++] = '\n';
    syscall(SYS_write, 2, buf, (size_t)n);
    syscall(SYS_exit_group, RL_EXIT_SYSCALL);
}

#ifdef RL_COPY_ARGS
/* Argument i's heap block: exactly the pointed-to bytes at the same misalignment, and the
 * SAME block while the arena buffer behind it stays the same, so a kernel that keys a
 * cache on its pointers sees stable pointers, as it would without the copy. */
static struct {
    int64_t off, size;
    void *block;
} held[RL_MAX_ARGS];

void *rl_arg_in(char *base, int i, int64_t off, int64_t size) {
    if (off < 0) return NULL;
    size_t mis = (size_t)off & 63u, bytes = size > 0 ? (size_t)size : 0;
    if (!held[i].block || held[i].off != off || held[i].size != size) {
        free(held[i].block);
        held[i].block = NULL;
        if (posix_memalign(&held[i].block, 64, mis + bytes + (bytes ? 0 : 1)) != 0) _exit(4);
        held[i].off = off;
        held[i].size = size;
    }
    char *p = (char *)held[i].block + mis;
    memcpy(p, base + off, bytes);
    return p;
}

void rl_arg_out(char *base, int i, int64_t off, int64_t size, const void *p) {
    (void)i;
    if (off >= 0 && size > 0) memcpy(base + off, p, (size_t)size);
}
#endif

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    size_t size = (size_t)strtoull(argv[1], NULL, 10);
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, RL_FD_ARENA, 0);
    if (base == MAP_FAILED) return 2;
    close(RL_FD_ARENA);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYS, &sa, NULL) != 0) return 2;
    if (install_filter() != 0) {
        static const char msg[] = "RLSECCOMP the seccomp filter could not be installed\n";
        rl_write_full(2, msg, sizeof msg - 1);
        return 2; /* never run an implementation unfiltered */
    }
    rl_reply reply = {0, 0, 0};
    if (rl_write_full(RL_FD_REPLY, &reply, sizeof reply) != 0) _exit(0);
    const rl_call *table = (const rl_call *)(base + RL_TABLE_OFFSET);
    for (;;) {
        rl_cmd cmd;
        if (rl_read_full(RL_FD_CMD, &cmd, sizeof cmd) != 0 || cmd.op == RL_OP_QUIT) _exit(0);
        reply.seq = cmd.seq;
        reply.status = 0;
        reply.done = 0;
        if (cmd.op != RL_OP_CALLS || cmd.first < 0 || cmd.count < 0 ||
            cmd.first + cmd.count > RL_TABLE_CALLS) {
            reply.status = 1;
        } else {
            for (int64_t k = 0; k < cmd.count; k++) rl_invoke(base, &table[cmd.first + k]);
            reply.done = cmd.count;
        }
        if (rl_write_full(RL_FD_REPLY, &reply, sizeof reply) != 0) _exit(0);
    }
}
