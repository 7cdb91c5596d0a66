/* Whole-buffer pipe I/O shared by rl_driver.c and rl_worker.c (retries on EINTR). */
#ifndef RL_IO_H
#define RL_IO_H

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* 0 when all n bytes were read, -1 on EOF or error */
static inline int rl_read_full(int fd, void *p, size_t n) {
    char *c = p;
    while (n) {
        ssize_t got = read(fd, c, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        c += got;
        n -= (size_t)got;
    }
    return 0;
}

/* 0 when all n bytes were written, -1 on error */
static inline int rl_write_full(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t put = write(fd, c, n);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) return -1;
        c += put;
        n -= (size_t)put;
    }
    return 0;
}

#endif
