/* Allocates and touches up to 50 GB in 64 MB chunks. Refuses to run (exit 3) unless a
 * memory cgroup limit below 2 GiB is visible, so it can never exhaust the machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long mem_limit(void) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    char line[512], path[1024];
    unsigned long long lim = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, ":memory:");
        if (!p) continue;
        p += 8;
        p[strcspn(p, "\n")] = 0;
        snprintf(path, sizeof path, "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", p);
        FILE *g = fopen(path, "r");
        if (g) {
            if (fscanf(g, "%llu", &lim) != 1) lim = 0;
            fclose(g);
        }
    }
    fclose(f);
    return lim;
}

int main(void) {
    unsigned long long lim = mem_limit();
    if (lim == 0 || lim > (2ULL << 30)) {
        printf("refusing: no memory limit visible (%llu)\n", lim);
        return 3;
    }
    const size_t chunk = 64ULL << 20;
    unsigned long long total = 0;
    while (total < (50ULL << 30)) {
        char *p = malloc(chunk);
        if (!p) { printf("malloc failed at %llu MB\n", total >> 20); return 4; }
        memset(p, 1, chunk);
        total += chunk;
        printf("%llu MB\n", total >> 20);
        fflush(stdout);
    }
    printf("allocated 50 GB\n");
    return 0;
}
