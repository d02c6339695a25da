/* Per-task padded input panels, shared by the dense (cconv.c) and sparse (csparse.c) forward kernels.
 *
 * Why: the kernels read a zero-padded, phase-split image (x[n][c][r][s][q] = xpad[n][c][r][q*S + s]). Building
 * that whole image before the kernel runs is a single-threaded pass over the input through main memory (on
 * jsegnet21v2 at 512x1024 about 6 ms per forward, 1.5 ms of it for conv1b's 16 MB input). Instead each task
 * copies the rows it reads, of the channels it reads, into a small panel in the same layout; the panel is then
 * hot in cache when the kernel reads it, and the copies run on all threads. The values read are the same, so
 * the results are the same to the bit.
 */
#ifndef CAFFELITE_PANEL_H
#define CAFFELITE_PANEL_H

#include <string.h>

/* Where a panel's rows come from: the raw input (N, C, H, W), its padding and column stride. */
struct panel_src {
    const float *x;
    int C, H, W, ph, pw, S, Wq;
};

/* Copy padded rows r0..r0+nr of channels c0..c0+nc of image n into dst (nc, hl, S, Wq), hl >= nr: element
 * [c][r][s][q] (r < nr) is the input at row r0 + r - ph, column q*S + s - pw, or 0 outside the input. */
static void build_panel(float *dst, const struct panel_src *ps, long n, int c0, int nc, int r0, int nr, int hl)
{
    const long rowlen = (long)ps->S * ps->Wq;
    for (int c = 0; c < nc; c++) {
        const float *xc = ps->x + (n * ps->C + c0 + c) * (long)ps->H * ps->W;
        for (int r = 0; r < nr; r++) {
            float *d = dst + ((long)c * hl + r) * rowlen;
            const int R = r0 + r - ps->ph;
            if (R < 0 || R >= ps->H) {
                memset(d, 0, (size_t)rowlen * sizeof(float));
                continue;
            }
            const float *s = xc + (long)R * ps->W;
            if (ps->S == 1) {
                const int w = ps->W < ps->Wq - ps->pw ? ps->W : ps->Wq - ps->pw;
                memset(d, 0, (size_t)ps->pw * sizeof(float));
                memcpy(d + ps->pw, s, (size_t)w * sizeof(float));
                memset(d + ps->pw + w, 0, (size_t)(ps->Wq - ps->pw - w) * sizeof(float));
                continue;
            }
            for (int ph = 0; ph < ps->S; ph++) {
                /* columns q with 0 <= q*S + ph - pw < W */
                int qlo = ps->pw - ph > 0 ? (ps->pw - ph + ps->S - 1) / ps->S : 0;
                int qhi = (ps->W + ps->pw - ph + ps->S - 1) / ps->S;
                if (qhi > ps->Wq) qhi = ps->Wq;
                if (qlo > qhi) qlo = qhi;
                float *dp = d + (long)ph * ps->Wq;
                const long sh = ph - ps->pw;
                for (int q = 0; q < qlo; q++) dp[q] = 0.0f;
                /* a constant stride 2 (the common case), so that the compiler vectorizes the copy */
                if (ps->S == 2)
                    for (int q = qlo; q < qhi; q++) dp[q] = s[2 * (long)q + sh];
                else
                    for (int q = qlo; q < qhi; q++) dp[q] = s[(long)q * ps->S + sh];
                for (int q = qhi; q < ps->Wq; q++) dp[q] = 0.0f;
            }
        }
    }
}

#endif
