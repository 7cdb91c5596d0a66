/* Fork bomb: every child forks again; the first process reports how far it got.
 * Refuses to run (exit 3) unless a limit is visible: a pids cgroup (v1 or v2), or, for a
 * non-root user, RLIMIT_NPROC; so a broken containment layer can never take the machine
 * down. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Really root, i.e. uid 0 outside any user namespace too (RLIMIT_NPROC spares only that). */
static int really_root(void) {
    FILE *f = fopen("/proc/self/uid_map", "r");
    long inside = -1, outside = -1;
    if (f) {
        if (fscanf(f, "%ld %ld", &inside, &outside) != 2) outside = -1;
        fclose(f);
    }
    return getuid() == 0 && inside == 0 && outside == 0;
}

static long pids_limit(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512], path[1024];
    long lim = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, ":pids:");
        const char *fmt = "/sys/fs/cgroup/pids%s/pids.max";
        if (p) p += 6;
        else if (strncmp(line, "0::", 3) == 0) { p = line + 3; fmt = "/sys/fs/cgroup%s/pids.max"; }
        if (!p) continue;
        p[strcspn(p, "\n")] = 0;
        snprintf(path, sizeof path, fmt, p);
        FILE *g = fopen(path, "r");
        if (g) {
            char buf[64] = {0};
            if (fgets(buf, sizeof buf, g) && strncmp(buf, "max", 3) != 0) lim = atol(buf);
            fclose(g);
        }
    }
    fclose(f);
    struct rlimit rl;
    if (lim < 0 && !really_root() && getrlimit(RLIMIT_NPROC, &rl) == 0 &&
        rl.rlim_cur != RLIM_INFINITY)
        lim = (long)rl.rlim_cur;
    return lim;
}

int main(void) {
    long lim = pids_limit();
    if (lim < 1 || lim > 4096) {
        printf("refusing: no pids limit visible (%ld)\n", lim);
        return 3;
    }
    long made = 0;
    for (;;) {
        pid_t pid = fork();
        if (pid == 0) {
            for (;;) {            /* children: keep forking, then sit */
                if (fork() < 0) pause();
            }
        }
        if (pid < 0) {
            printf("fork failed after %ld children: %s (limit %ld)\n", made, strerror(errno), lim);
            fflush(stdout);
            return 0;
        }
        made++;
    }
}
