/* A heap overflow ASan must report from inside the sandbox. */
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    (void)argv;
    volatile int *a = malloc(8 * sizeof *a);
    a[8 + argc] = 1;
    printf("unreachable %d\n", a[0]);
    return 0;
}
