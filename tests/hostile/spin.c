/* Burns CPU forever. Contained by the wall-clock timeout (or RLIMIT_CPU). */
int main(void) {
    volatile unsigned long n = 0;
    for (;;) n++;
}
