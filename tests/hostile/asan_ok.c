/* A legitimate program: must build and run cleanly under -fsanitize=address,undefined. */
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    int *a = malloc(100 * sizeof *a);
    long s = 0;
    for (int i = 0; i < 100; i++) a[i] = i;
    for (int i = 0; i < 100; i++) s += a[i];
    free(a);
    printf("sum %ld\n", s);
    return 0;
}
