#include <stddef.h>

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int B, int T, int C, int OC) {
    // out[B*T, OC] = inp[B*T, C] @ weight[OC, C]^T + bias[OC]; bias may be NULL
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int bt = b * T + t;
            const float* inp_bt = inp + (size_t)bt * C;
            float* out_bt = out + (size_t)bt * OC;
            for (int o = 0; o < OC; o++) {
                const float* wrow = weight + (size_t)o * C;
                float val = (bias != NULL) ? bias[o] : 0.0f;
                for (int i = 0; i < C; i++) {
                    val += inp_bt[i] * wrow[i];
                }
                out_bt[o] = val;
            }
        }
    }
}
