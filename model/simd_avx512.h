/* simd_avx512.h - AVX-512 register helpers shared by the kernel files: the
 * float and bf16 products in kernels_avx512.c and the integer ones in
 * quant.c.  Each is static inline and always inlined, so it compiles with its
 * caller's target (a superset of avx512f); include after <immintrin.h>. */
#ifndef QVL_SIMD_AVX512_H
#define QVL_SIMD_AVX512_H

#include <immintrin.h>

/* Transposes 16 x 16 32-bit elements in place: r[i] lane j <-> r[j] lane i.
 * Only bits move, so floats go through it cast (transpose16_ps). */
__attribute__((target("avx512f"), always_inline))
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    _Pragma("GCC unroll 16") for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    _Pragma("GCC unroll 16") for (int i = 0; i < 4; i++) {        /* u[4i + k], 128-bit chunk c: rows 4i..4i+3 at column 4c + k */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    _Pragma("GCC unroll 16") for (int k = 0; k < 4; k++) {
        __m512i a0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88), a1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        __m512i b0 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88), b1 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_i32x4(a0, b0, 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(a0, b0, 0xDD);
        r[4 + k] = _mm512_shuffle_i32x4(a1, b1, 0x88);
        r[12 + k] = _mm512_shuffle_i32x4(a1, b1, 0xDD);
    }
}

__attribute__((target("avx512f"), always_inline))
static inline void transpose16_ps(__m512 r[16]) {
    __m512i v[16];
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) v[i] = _mm512_castps_si512(r[i]);
    transpose16(v);
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) r[i] = _mm512_castsi512_ps(v[i]);
}

#endif
