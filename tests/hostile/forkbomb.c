/* Fork bomb: every child forks again; the first process reports how far it got.
 * Refuses to run (exit 3) unless a pids cgroup limit is visible, so a broken
 * containment layer can never take the machine down. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long pids_limit(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512], path[1024];
    long lim = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, ":pids:");
        if (!p) continue;
        p += 6;
        p[strcspn(p, "\n")] = 0;
        snprintf(path, sizeof path, "/sys/fs/cgroup/pids%s/pids.max", p);
        FILE *g = fopen(path, "r");
        if (g) {
            char buf[64] = {0};
            if (fgets(buf, sizeof buf, g) && strncmp(buf, "max", 3) != 0) lim = atol(buf);
            fclose(g);
        }
    }
    fclose(f);
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
