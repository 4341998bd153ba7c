/* dataurl.h - data: URLs (RFC 2397) with base64 payloads, decoded into memory. */
#ifndef QVL_DATAURL_H
#define QVL_DATAURL_H

#include <stddef.h>

/* Decodes "data:[type][;params];base64,DATA" into a malloc'd buffer (*len
 * bytes).  Standard or URL-safe alphabet, whitespace skipped, padding
 * optional.  -1 with a one-line reason in err when it is not such a URL or
 * holds no data. */
int data_url_decode(const char *url, unsigned char **data, size_t *len, char *err);

/* "data:MIME;base64,..." for len bytes (malloc'd), or NULL when out of memory. */
char *data_url_encode(const char *mime, const unsigned char *data, size_t len);

#endif
