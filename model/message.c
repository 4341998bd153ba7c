/* message.c - the parts of a JSONL user message (format in message.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "dataurl.h"
#include "message.h"


void message_free(qvl_message *m) {
    for (int i = 0; i < m->nblobs; i++) free(m->blobs[i]);
    free(m->blobs);
    free(m->parts);
    memset(m, 0, sizeof *m);
}

/* An image reference: data: URL (decoded), file:// URL or plain path. */
static int image_part(qvl_message *m, qvl_part *p, const char *ref, const char *where, char *err) {
    char why[QVL_ERR_MAX];
    if (!strncmp(ref, "data:", 5)) {
        unsigned char *data;
        size_t len;
        if (data_url_decode(ref, &data, &len, why)) { qvl_seterr(err, "%s: %s", where, why); return -1; }
        m->blobs[m->nblobs++] = data;
        p->image_data = data;
        p->image_size = len;
        return 0;
    }
    if (!strncmp(ref, "http://", 7) || !strncmp(ref, "https://", 8)) {
        qvl_seterr(err, "%s: remote URLs are not fetched; give a path or a data: URL", where);
        return -1;
    }
    if (!strncmp(ref, "file://", 7)) ref += 7;
    if (!*ref) { qvl_seterr(err, "%s: empty image path", where); return -1; }
    p->image_path = ref;
    return 0;
}

static int content_part(qvl_message *m, const cJSON *item, int i, char *err) {
    char where[64];
    snprintf(where, sizeof where, "content[%d]", i);
    qvl_part *p = &m->parts[m->nparts];
    memset(p, 0, sizeof *p);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(item, "type");
    if (!cJSON_IsObject(item) || !cJSON_IsString(type)) {
        qvl_seterr(err, "%s: expected an object with a \"type\"", where);
        return -1;
    }
    const char *t = type->valuestring;
    if (!strcmp(t, "text")) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(item, "text");
        if (!cJSON_IsString(text)) { qvl_seterr(err, "%s: \"text\" must be a string", where); return -1; }
        p->text = text->valuestring;
    } else if (!strcmp(t, "image")) {
        const cJSON *img = cJSON_GetObjectItemCaseSensitive(item, "image");
        if (!cJSON_IsString(img)) { qvl_seterr(err, "%s: \"image\" must be a path string", where); return -1; }
        if (image_part(m, p, img->valuestring, where, err)) return -1;
    } else if (!strcmp(t, "image_url")) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(item, "image_url");
        if (cJSON_IsObject(u)) u = cJSON_GetObjectItemCaseSensitive(u, "url");
        if (!cJSON_IsString(u)) {
            qvl_seterr(err, "%s: \"image_url\" must be {\"url\": \"...\"}", where);
            return -1;
        }
        if (image_part(m, p, u->valuestring, where, err)) return -1;
    } else {
        qvl_seterr(err, "%s: unknown part type \"%.40s\" (text, image or image_url)", where, t);
        return -1;
    }
    m->nparts++;
    return 0;
}

/* "content": a string or an array of parts, into m. */
int message_parse(const cJSON *content, qvl_message *m, char *err) {
    int n = cJSON_IsArray(content) ? cJSON_GetArraySize(content) : 1;
    m->parts = calloc((size_t)n + 1, sizeof *m->parts);
    m->blobs = calloc((size_t)n + 1, sizeof *m->blobs);
    if (!m->parts || !m->blobs) { qvl_seterr(err, "out of memory"); return -1; }
    if (cJSON_IsString(content)) {
        m->parts[0].text = content->valuestring;
        m->nparts = 1;
        return 0;
    }
    if (!cJSON_IsArray(content)) {
        qvl_seterr(err, "\"content\" must be a string or an array of parts");
        return -1;
    }
    if (n == 0) { qvl_seterr(err, "\"content\" is empty"); return -1; }
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, content)
        if (content_part(m, item, i++, err)) return -1;
    return 0;
}

