/* sha256.h - SHA-256 (FIPS 180-4), for checking synthetic checkpoints against their manifests. */
#ifndef QVL_TEST_SHA256_H
#define QVL_TEST_SHA256_H
#include <stddef.h>
/* Hex digest (65 bytes with the NUL) of len bytes. */
void sha256_hex(const void *data, size_t len, char hex[65]);
#endif
