/* common.h - small things every module of the engine uses.
 *
 * Errors: a function that can fail takes `char *err` (QVL_ERR_MAX bytes, may be
 * NULL), writes one line saying what failed and why (naming the file, key or
 * tensor involved) and returns -1 or NULL.  No module prints to stderr by itself:
 * the program decides what the user sees. */
#ifndef QVL_COMMON_H
#define QVL_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define QVL_ERR_MAX 512

void qvl_seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads a whole file into a NUL-terminated buffer; *len gets its size. */
char *qvl_read_file(const char *path, size_t *len, char *err);

/* Scalar conversions between the stored weight types and float. */
static inline float qvl_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { .u = (uint32_t)h << 16 };
    return v.f;
}
/* Round to nearest even, as torch does when casting float32 to bfloat16. */
static inline uint16_t qvl_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v = { .f = f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* NaN */
    uint32_t rounding = ((v.u >> 16) & 1u) + 0x7fffu;
    return (uint16_t)((v.u + rounding) >> 16);
}
float qvl_f16_to_f32(uint16_t h);
/* Round to nearest even, overflow to infinity, NaN kept quiet with the top of
 * its payload: the same bits as the F16C instruction vcvtps2ph. */
uint16_t qvl_f32_to_f16(float f);

/* Monotonic clock in seconds. */
double qvl_now(void);

#endif
