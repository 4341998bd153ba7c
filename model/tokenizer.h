/* tokenizer.h - the byte-level BPE tokenizer of the Qwen2/Qwen3 family, read
 * from a Hugging Face tokenizer.json and producing exactly the ids the
 * `tokenizers` library produces for the same text.
 *
 * Encoding: added tokens (special or not) are cut out of the text first,
 * longest match first; every stretch between them is NFC-normalized, split by
 * the file's pre-tokenizer regex, mapped to bytes and merged by BPE rank.
 *
 * Invalid UTF-8 in the input is not an error.  Each invalid byte is kept as it
 * is: it never matches the split regex, so runs of invalid bytes become pieces
 * of their own, which go through the byte-level mapping like any other byte.
 * Decoding gives the same bytes back, so decode(encode(s)) == s for every
 * byte string s whose valid parts are already in NFC.  (transformers takes
 * Python strings, which cannot hold such bytes; the streaming decoder below
 * shows them as U+FFFD, as Python's errors="replace" does.)
 *
 * A loaded tokenizer is read-only: one may be shared by several threads. */
#ifndef QVL_TOKENIZER_H
#define QVL_TOKENIZER_H

#include <stddef.h>
#include "source.h"

typedef struct qvl_tokenizer qvl_tokenizer;

/* A growable list of token ids. Start from {0}; free with tok_ids_free. */
typedef struct {
    int *v;
    size_t n, cap;
} tok_ids;

int tok_ids_push(tok_ids *a, int id);
void tok_ids_free(tok_ids *a);

/* Loading. `label` names the file in error messages. */
qvl_tokenizer *tok_load_json(const char *json, size_t len, const char *label, char *err);
qvl_tokenizer *tok_load_file(const char *path, char *err);
/* The model's tokenizer.json. */
qvl_tokenizer *tok_load_source(const qvl_source *src, char *err);
void tok_free(qvl_tokenizer *t);

/* Appends the ids of text[0..len) to *out. Fails only when out of memory. */
int tok_encode(const qvl_tokenizer *t, const char *text, size_t len, tok_ids *out, char *err);

/* The text of ids, NUL-terminated and malloc'd (*len its size, may be NULL).
 * Ids that name no token are skipped, as transformers does; with skip_special,
 * so are the special added tokens (<|im_end|>, ...). NULL only when out of memory. */
char *tok_decode(const qvl_tokenizer *t, const int *ids, size_t n, int skip_special, size_t *len, char *err);

/* Lookups. */
int tok_vocab_size(const qvl_tokenizer *t);           /* largest id + 1 */
/* The token as tokenizer.json writes it (byte-level form, "Ġworld"), or NULL. */
const char *tok_id_to_piece(const qvl_tokenizer *t, int id);
int tok_piece_to_id(const qvl_tokenizer *t, const char *piece);       /* -1 if none */
/* The bytes a token stands for ("Ġworld" -> " world"); NULL (and *len 0) if none. */
const char *tok_token_bytes(const qvl_tokenizer *t, int id, size_t *len);
/* Id of an added token by its text, e.g. "<|im_end|>" or "</think>"; -1 if none. */
int tok_special_id(const qvl_tokenizer *t, const char *text);
int tok_is_special(const qvl_tokenizer *t, int id);   /* added token marked special */

/* Streaming decoder: feed ids one at a time, get back only complete UTF-8
 * characters (a token may end in the middle of one).  Bytes that cannot be
 * part of a valid character come out as U+FFFD. */
typedef struct {
    const qvl_tokenizer *tok;
    int skip_special;
    unsigned char pending[4];  /* start of a character still incomplete */
    int npending;
    char *buf;                 /* output of the last call */
    size_t cap;
} tok_stream;

void tok_stream_init(tok_stream *s, const qvl_tokenizer *t, int skip_special);
/* The text the id completes ("" when it ends mid-character); valid until the
 * next call. *len gets its size. NULL only when out of memory. */
const char *tok_stream_push(tok_stream *s, int id, size_t *len);
/* End of stream: an incomplete character left over becomes U+FFFD. */
const char *tok_stream_flush(tok_stream *s, size_t *len);
void tok_stream_free(tok_stream *s);

#endif
