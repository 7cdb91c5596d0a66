#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Reference-quality seed: three passes per query row over a scores buffer.
 * Layout: q/out [B][H][T][D], k/v [B][Hkv][S][D], mask [T][S] (nonzero = may attend)
 * or NULL. Query head h reads kv head h / (H / Hkv). Causal: query i sees key j only
 * when j <= i + (S - T). A row with no visible key is written as zeros. */
void attention(const float *q, const float *k, const float *v, float *out,
               const unsigned char *mask, int batch, int heads, int kv_heads,
               int t_len, int s_len, int head_dim, float scale, int causal)
{
    float *scores = malloc((size_t)(s_len > 0 ? s_len : 1) * sizeof *scores);
    if (scores == NULL)
        return;
    int group = heads / kv_heads;
    int shift = s_len - t_len;
    for (int b = 0; b < batch; b++) {
        for (int h = 0; h < heads; h++) {
            int kvh = h / group;
            const float *qh = q + ((size_t)(b * heads + h) * t_len) * head_dim;
            const float *kh = k + ((size_t)(b * kv_heads + kvh) * s_len) * head_dim;
            const float *vh = v + ((size_t)(b * kv_heads + kvh) * s_len) * head_dim;
            float *oh = out + ((size_t)(b * heads + h) * t_len) * head_dim;
            for (int i = 0; i < t_len; i++) {
                const float *qi = qh + (size_t)i * head_dim;
                float *oi = oh + (size_t)i * head_dim;
                float max = -INFINITY;
                int visible = 0;
                for (int j = 0; j < s_len; j++) {
                    int allowed = (!causal || j <= i + shift) &&
                                  (mask == NULL || mask[(size_t)i * s_len + j]);
                    if (!allowed) {
                        scores[j] = -INFINITY;
                        continue;
                    }
                    const float *kj = kh + (size_t)j * head_dim;
                    float dot = 0.0f;
                    for (int d = 0; d < head_dim; d++)
                        dot += qi[d] * kj[d];
                    scores[j] = dot * scale;
                    if (scores[j] > max)
                        max = scores[j];
                    visible = 1;
                }
                memset(oi, 0, (size_t)head_dim * sizeof *oi);
                if (!visible)
                    continue;
                float sum = 0.0f;
                for (int j = 0; j < s_len; j++) {
                    float p = scores[j] == -INFINITY ? 0.0f : expf(scores[j] - max);
                    scores[j] = p;
                    sum += p;
                }
                for (int j = 0; j < s_len; j++) {
                    if (scores[j] == 0.0f)
                        continue;
                    float w = scores[j] / sum;
                    const float *vj = vh + (size_t)j * head_dim;
                    for (int d = 0; d < head_dim; d++)
                        oi[d] += w * vj[d];
                }
            }
        }
    }
    free(scores);
}
