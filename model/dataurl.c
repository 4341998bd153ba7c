/* dataurl.c - decoding "data:" URLs, the way JSONL input carries images
 * inline (OpenAI's image_url parts).  Only base64 payloads: that is what
 * every client sends for binary data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataurl.h"

static int base64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;   /* '-' and '_': the URL-safe alphabet */
    if (c == '/' || c == '_') return 63;
    return -1;
}

/* Standard or URL-safe base64; whitespace is skipped, padding optional. */
static int base64_decode(const char *s, unsigned char **data, size_t *len) {
    size_t n = strlen(s);
    unsigned char *out = malloc(n / 4 * 3 + 3);
    if (!out) return -1;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0, pad = 0;
    for (const char *p = s; *p; p++) {
        if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') continue;
        if (*p == '=') { pad++; continue; }
        int v = base64_value((unsigned char)*p);
        if (v < 0 || pad) { free(out); return -1; }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (pad > 2 || bits >= 6) { free(out); return -1; }
    *data = out;
    *len = o;
    return 0;
}

int data_url_decode(const char *url, unsigned char **data, size_t *len, char *err) {
    if (strncmp(url, "data:", 5)) { qvl_seterr(err, "not a data: URL"); return -1; }
    const char *comma = strchr(url, ',');
    if (!comma) { qvl_seterr(err, "data: URL without a comma"); return -1; }
    size_t head = (size_t)(comma - url);
    if (head < 12 || strncmp(comma - 7, ";base64", 7)) {
        qvl_seterr(err, "data: URL is not base64 (expected data:image/...;base64,...)");
        return -1;
    }
    if (base64_decode(comma + 1, data, len)) { qvl_seterr(err, "data: URL has invalid base64"); return -1; }
    if (*len == 0) { free(*data); qvl_seterr(err, "data: URL holds no data"); return -1; }
    return 0;
}

char *data_url_encode(const char *mime, const unsigned char *data, size_t n) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen("data:;base64,") + strlen(mime) + 4 * ((n + 2) / 3) + 1;
    char *s = malloc(len);
    if (!s) return NULL;
    char *o = s + sprintf(s, "data:%s;base64,", mime);
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)data[i] << 16 | (i + 1 < n ? (unsigned)data[i + 1] << 8 : 0) | (i + 2 < n ? data[i + 2] : 0);
        *o++ = b64[v >> 18 & 63];
        *o++ = b64[v >> 12 & 63];
        *o++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *o = 0;
    return s;
}
