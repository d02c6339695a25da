/* Rounding onto an integer grid, shared by the integer kernels (cint8.c, ci8glue.c): clip v to [lo, hi], then round
 * half to even, or half away from zero (caffe-jacinto's CPU rounding) when `away`. Adding and removing 1.5 * 2^52
 * rounds a double with |v| < 2^51 to an integer in the default rounding mode (the clip keeps v that small). */
#ifndef CAFFELITE_QROUND_H
#define CAFFELITE_QROUND_H

static inline __attribute__((always_inline)) double clip_round(double v, double lo, double hi, int away)
{
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    double r = (v + 0x1.8p52) - 0x1.8p52;
    if (away) {
        const double d = v - r;
        r = (d == 0.5 && v > 0) ? r + 1.0 : r;
        r = (d == -0.5 && v < 0) ? r - 1.0 : r;
    }
    return r;
}

#endif
