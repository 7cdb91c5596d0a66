/* Kills its parent (the evaluator), tries to kill pid 1 (the sandbox's init) and, only when
 * it can see that it is inside the sandbox's pid namespace, every process it can reach
 * (kill(-1) outside a namespace, as root, would take down the whole machine). Then lingers. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int in_sandbox_pidns(void) {
    char buf[4096] = {0};
    FILE *f = fopen("/proc/1/cmdline", "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++) if (!buf[i]) buf[i] = ' ';
    return strstr(buf, "sandbox.py --init") != NULL;
}

int main(void) {
    int contained = in_sandbox_pidns();
    kill(getppid(), SIGKILL);
    kill(1, SIGKILL);
    if (contained) kill(-1, SIGKILL);
    for (;;) pause();
}
