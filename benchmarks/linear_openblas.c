/* numpy's own sgemm (its bundled scipy-openblas64: ILP64, symbols scipy_*64_) as a C
 * implementation of matmul_forward, for the kernel benchmarks (kernelbench.LINEAR_OPENBLAS):
 * the harness times it like the kernels, in a sandboxed worker, on the same per-call
 * buffers, interleaved, with the same estimator. numpy's own figure pays Python's call
 * overhead (~1 us) but reuses one warm set of buffers, so at small shapes it is neither
 * fair nor comparable. A trusted reference, linked by the benchmark (cbuild libs=); never
 * a candidate. The harness pins workers to one CPU and clears their environment, so
 * OpenBLAS runs one thread there; should it ever run more, their work would escape the
 * caller's CPU time, so the output is then NaN and the harness's check fails loudly. */
#include <math.h>
#include <stddef.h>
#include <string.h>
void scipy_cblas_sgemm64_(int order, int transa, int transb, long M, long N, long K,
                          float alpha, const float *A, long lda, const float *B, long ldb,
                          float beta, float *C, long ldc);
int scipy_openblas_get_num_threads64_(void);
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int B, int T, int C, int OC) {
    long BT = (long)B * T;
    if (scipy_openblas_get_num_threads64_() != 1) {
        for (long k = 0; k < BT * OC; k++) out[k] = NAN;
        return;
    }
    if (bias)
        for (long r = 0; r < BT; r++) memcpy(out + r * OC, bias, sizeof(float) * (size_t)OC);
    /* row-major: out[BT x OC] (+)= inp[BT x C] . weight[OC x C]^T */
    scipy_cblas_sgemm64_(101, 111, 112, BT, OC, C, 1.0f, inp, C, weight, C,
                         bias ? 1.0f : 0.0f, out, OC);
}
