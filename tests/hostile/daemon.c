/* Double-fork daemon: detaches with setsid(), ignores SIGTERM/SIGHUP and sleeps forever,
 * while its parent exits 0 as if all were well. argv[1] is a marker the test looks for. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    (void)argc; (void)argv;
    int ready[2];
    if (pipe(ready) != 0) return 2;
    pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
        setsid();
        if (fork() != 0) _exit(0);        /* first child exits: daemon is orphaned */
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        close(ready[0]);
        if (write(ready[1], "x", 1) != 1) _exit(2);
        close(ready[1]);
        for (;;) pause();
    }
    close(ready[1]);
    char c;
    if (read(ready[0], &c, 1) != 1) return 2;  /* the daemon is up and detached */
    printf("daemon started\n");
    return 0;
}
