/* message.h - a user message in the JSONL format (OpenAI chat style), as
 * --jsonl reads it, /save writes it and /load and `qvl dump` read it back:
 *   "content": "text"
 *   "content": [{"type":"text","text":"..."},
 *               {"type":"image","image":"path/or/file.png"},
 *               {"type":"image_url","image_url":{"url":"data:image/png;base64,..."}}]
 * parts in any order. */
#ifndef QVL_MESSAGE_H
#define QVL_MESSAGE_H

#include <cjson/cJSON.h>
#include "session.h"

typedef struct {
    qvl_part *parts;            /* text points into the cJSON tree: keep it alive */
    int nparts;
    unsigned char **blobs;      /* decoded data: URLs, freed with the message */
    int nblobs;
} qvl_message;

/* Parses "content" into m (zeroed by the caller); -1 with a one-line reason. */
int message_parse(const cJSON *content, qvl_message *m, char *err);
void message_free(qvl_message *m);

#endif
