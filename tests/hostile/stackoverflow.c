/* Unbounded recursion: dies of SIGSEGV; must not leave a core file behind. */
#include <stdio.h>
static int depth(volatile char *prev) {
    volatile char frame[4096];
    frame[0] = prev ? prev[0] + 1 : 0;
    return depth(frame) + frame[0];
}
int main(void) {
    printf("%d\n", depth(0));
    return 0;
}
