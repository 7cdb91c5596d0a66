/* Floods stdout and stderr without end. */
#include <stdio.h>
int main(void) {
    for (unsigned long i = 0;; i++) {
        printf("flood line %lu ............................................................\n", i);
        if (i % 64 == 0) fprintf(stderr, "err %lu\n", i);
    }
}
