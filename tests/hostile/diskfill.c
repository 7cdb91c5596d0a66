/* Fills the disk with many files, each under the file-size limit (RLIMIT_FSIZE does not help).
 * Refuses (exit 3) unless its work dir sits on a filesystem smaller than 1 GiB. */
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

int main(void) {
    struct statvfs vfs;
    if (statvfs(".", &vfs) != 0 || (unsigned long long)vfs.f_blocks * vfs.f_frsize > (1ULL << 30)) {
        printf("refusing: work dir is not on a small filesystem\n");
        return 3;
    }
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    for (int i = 0; i < 100000; i++) {
        char name[64];
        snprintf(name, sizeof name, "fill-%05d.bin", i);
        FILE *f = fopen(name, "wb");
        if (!f) { printf("open failed at file %d\n", i); return 4; }
        for (int j = 0; j < 4; j++) {
            if (fwrite(block, 1, sizeof block, f) != sizeof block || fflush(f) != 0) {
                printf("disk full after %d files\n", i);
                return 4;
            }
        }
        fclose(f);
    }
    printf("wrote 400 GB\n");
    return 0;
}
