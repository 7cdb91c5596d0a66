/* Writes a 4 GB file in 1 MB blocks. Refuses (exit 3) unless RLIMIT_FSIZE is set. */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

int main(int argc, char **argv) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
        printf("refusing: no file size limit\n");
        return 3;
    }
    FILE *f = fopen(argc > 1 ? argv[1] : "big.bin", "wb");
    if (!f) return 2;
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    for (int i = 0; i < 4096; i++) {
        if (fwrite(block, 1, sizeof block, f) != sizeof block) {
            printf("write failed at %d MB\n", i);
            return 4;
        }
    }
    fclose(f);
    printf("wrote 4 GB\n");
    return 0;
}
