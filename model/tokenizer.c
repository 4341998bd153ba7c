/* tokenizer.c - byte-level BPE as the Hugging Face `tokenizers` library runs it
 * for the Qwen2/Qwen3 family (tokenizer.json: NFC normalizer, a Split
 * pre-tokenizer regex, ByteLevel mapping, a BPE model, added tokens).
 *
 * The pipeline for one text:
 *   1. cut out the added tokens (<|im_start|>, <think>, ...): at the leftmost
 *      position where one matches, the longest one wins;
 *   2. NFC-normalize each stretch between them (utf8proc);
 *   3. split it with the file's regex (PCRE2 with UTF+UCP, JIT when available;
 *      text the regex does not match is kept as pieces too, "Isolated");
 *   4. turn every piece into bytes and merge adjacent symbols by BPE rank.
 *
 * Added tokens are matched on the raw text; their lstrip/rstrip/single_word
 * options (never set in the Qwen family) are refused at load time, and their
 * "normalized" flag makes no difference for ASCII tokens under NFC.
 *
 * BPE works on token ids, not strings: every byte starts as the id of its
 * byte-level character, and a hash of (left id, right id) gives the merge rank
 * and the merged id.  The lowest rank is merged first (leftmost on ties), with a
 * heap over candidate pairs, so a long piece costs O(n log n).  This is the
 * order `tokenizers` uses, so the ids are the same.
 *
 * Decoding needs no string work either: each id has the bytes it stands for,
 * computed once at load time through the inverse byte-level map. */
#include "tokenizer.h"
#include "common.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Sanity bound on ids read from a file: a vocabulary is far smaller. */
#define MAX_TOKEN_ID (1 << 24)

enum { KIND_NONE, KIND_VOCAB, KIND_ADDED, KIND_SPECIAL };

typedef struct {
    uint32_t off, len;       /* content in the arena */
    int id;
} added_token;

typedef struct {
    uint64_t key;            /* left id << 32 | right id; UINT64_MAX when empty */
    int rank, id;
} merge_slot;

struct qvl_tokenizer {
    int nslots;                          /* largest id + 1 */
    unsigned char *kind;                 /* per id: KIND_* */
    uint32_t *piece_off, *piece_len;     /* per id: the token as the file spells it */
    uint32_t *bytes_off, *bytes_len;     /* per id: the bytes it stands for */
    char *arena;                         /* all strings, each NUL-terminated */
    size_t arena_len, arena_cap;

    int *vocab_slots;                    /* piece -> id hash (model vocab), -1 = empty */
    size_t vocab_mask;
    merge_slot *merges;                  /* (left, right) -> rank, merged id */
    size_t merge_mask;
    int byte_id[256];                    /* id of each byte's byte-level character, -1 if none */
    uint32_t byte_cp[256];               /* each byte's byte-level character */

    added_token *added;                  /* sorted by length, longest first */
    int nadded;
    unsigned char added_first[256];      /* whether some added token starts with this byte */

    pcre2_code *re;                      /* the Split regex, or NULL */
    int nfc;                             /* NFC normalizer */
    int ignore_merges;                   /* BPE option: a piece in the vocab is one token */
};

/* ---------------------------------------------------------------- ids list */

int tok_ids_push(tok_ids *a, int id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

void tok_ids_free(tok_ids *a) {
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 character at s[0..n): > 0 its length; 0 when
 * s[0..n) is only the valid start of a longer character; -k when the first k
 * bytes are a maximal invalid subpart (what Python replaces by one U+FFFD). */
static int utf8_char(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;       /* overlong */
        if (c == 0xED) hi = 0x9F;       /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;       /* overlong */
        if (c == 0xF4) hi = 0x8F;       /* above U+10FFFF */
    } else return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return 0;
        if (s[i] < lo || s[i] > hi) return -i;
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

static int utf8_put(unsigned char *dst, uint32_t cp) {
    if (cp < 0x80) { dst[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        dst[0] = (unsigned char)(0xC0 | cp >> 6);
        dst[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (unsigned char)(0xE0 | cp >> 12);
        dst[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (unsigned char)(0xF0 | cp >> 18);
    dst[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---------------------------------------------------------------- byte-level map */

/* GPT-2's reversible byte <-> character map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes (controls, space, ...) get U+0100 onwards, so
 * every byte has a visible character and BPE never sees whitespace. */
static void byte_level_table(uint32_t byte_to_cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

/* The inverse map: byte of a byte-level character (U+0000..U+0143), or -1. */
#define BYTE_LEVEL_CPS (256 + 68)

static void byte_level_inverse(const uint32_t byte_to_cp[256], int16_t cp_to_byte[BYTE_LEVEL_CPS]) {
    for (int c = 0; c < BYTE_LEVEL_CPS; c++) cp_to_byte[c] = -1;
    for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp[b]] = (int16_t)b;
}

/* ---------------------------------------------------------------- arena, hashes */

static int64_t arena_add(qvl_tokenizer *t, const void *s, size_t len) {
    if (t->arena_len + len + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 20;
        while (cap < t->arena_len + len + 1) cap *= 2;
        if (cap > UINT32_MAX) return -1;
        char *a = realloc(t->arena, cap);
        if (!a) return -1;
        t->arena = a;
        t->arena_cap = cap;
    }
    size_t off = t->arena_len;
    memcpy(t->arena + off, s, len);
    t->arena[off + len] = 0;
    t->arena_len += len + 1;
    return (int64_t)off;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;       /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key) {
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 31);
}

static size_t table_size(size_t n) {
    size_t size = 16;
    while (size < n * 2) size *= 2;
    return size;
}

static int vocab_find(const qvl_tokenizer *t, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (t->piece_len[id] == n && !memcmp(t->arena + t->piece_off[id], s, n)) return id;
    }
}

static void vocab_insert(qvl_tokenizer *t, int id) {
    const char *s = t->arena + t->piece_off[id];
    size_t i = hash_bytes(s, t->piece_len[id]) & t->vocab_mask;
    while (t->vocab_slots[i] >= 0) i = (i + 1) & t->vocab_mask;
    t->vocab_slots[i] = id;
}

static const merge_slot *merge_find(const qvl_tokenizer *t, int a, int b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = hash_pair(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
    }
}

/* A later duplicate of a merge replaces the earlier one, as in `tokenizers`. */
static void merge_insert(qvl_tokenizer *t, int a, int b, int rank, int id) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = hash_pair(key) & t->merge_mask;
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
    t->merges[i] = (merge_slot){ key, rank, id };
}

/* ---------------------------------------------------------------- loading */

/* Records id's spelling and the bytes it decodes to.  Like the ByteLevel
 * decoder, a token with a character outside the byte-level alphabet decodes
 * to its own UTF-8 text. */
static int set_token(qvl_tokenizer *t, const int16_t cp_to_byte[BYTE_LEVEL_CPS], int id, const char *s, int kind) {
    size_t n = strlen(s);
    int64_t off = arena_add(t, s, n);
    if (off < 0) return -1;
    t->piece_off[id] = (uint32_t)off;
    t->piece_len[id] = (uint32_t)n;
    t->kind[id] = (unsigned char)kind;

    unsigned char small[256], *bytes = n < sizeof small ? small : malloc(n + 1);
    if (!bytes) return -1;
    size_t nb = 0;
    int byte_level = 1;
    for (size_t i = 0; i < n && byte_level;) {
        int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        int b = k > 0 && cp < BYTE_LEVEL_CPS ? cp_to_byte[cp] : -1;
        if (b < 0) byte_level = 0;
        else bytes[nb++] = (unsigned char)b, i += (size_t)k;
    }
    off = byte_level ? arena_add(t, bytes, nb) : (int64_t)t->piece_off[id];
    if (bytes != small) free(bytes);
    if (off < 0) return -1;
    t->bytes_off[id] = (uint32_t)off;
    t->bytes_len[id] = byte_level ? (uint32_t)nb : (uint32_t)n;
    return 0;
}

static int alloc_tables(qvl_tokenizer *t, int nslots) {
    t->nslots = nslots;
    t->kind = calloc((size_t)nslots, 1);
    t->piece_off = calloc((size_t)nslots, sizeof(uint32_t));
    t->piece_len = calloc((size_t)nslots, sizeof(uint32_t));
    t->bytes_off = calloc((size_t)nslots, sizeof(uint32_t));
    t->bytes_len = calloc((size_t)nslots, sizeof(uint32_t));
    return t->kind && t->piece_off && t->piece_len && t->bytes_off && t->bytes_len ? 0 : -1;
}

static int cmp_added_longest_first(const void *a, const void *b) {
    const added_token *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id - y->id;
}

/* The two spellings of a merge: ["a", "b"] and "a b". */
static int merge_strings(const cJSON *m, const char **a, size_t *alen, const char **b, size_t *blen) {
    if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2) {
        const cJSON *x = cJSON_GetArrayItem(m, 0), *y = cJSON_GetArrayItem(m, 1);
        if (!cJSON_IsString(x) || !cJSON_IsString(y)) return -1;
        *a = x->valuestring, *alen = strlen(x->valuestring);
        *b = y->valuestring, *blen = strlen(y->valuestring);
        return 0;
    }
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring, *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1;
        *a = s, *alen = (size_t)(sp - s);
        *b = sp + 1, *blen = strlen(sp + 1);
        return 0;
    }
    return -1;
}

static int load_merges(qvl_tokenizer *t, const cJSON *merges, const char *label, char *err) {
    int n = cJSON_GetArraySize(merges);
    t->merge_mask = table_size((size_t)n) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof *t->merges);
    char *joined = NULL;
    size_t cap = 0;
    if (!t->merges) goto oom;
    for (size_t i = 0; i <= t->merge_mask; i++) t->merges[i].key = UINT64_MAX;
    int rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const char *a, *b;
        size_t alen, blen;
        if (merge_strings(m, &a, &alen, &b, &blen)) {
            qvl_seterr(err, "%s: model.merges[%d] is not a pair of tokens", label, rank);
            free(joined);
            return -1;
        }
        if (alen + blen + 1 > cap) {
            cap = (alen + blen + 1) * 2;
            char *j = realloc(joined, cap);
            if (!j) goto oom;
            joined = j;
        }
        memcpy(joined, a, alen);
        memcpy(joined + alen, b, blen);
        int ia = vocab_find(t, a, alen), ib = vocab_find(t, b, blen);
        int im = vocab_find(t, joined, alen + blen);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *bad = ia < 0 ? a : ib < 0 ? b : joined;
            int badlen = (int)(ia < 0 ? alen : ib < 0 ? blen : alen + blen);
            qvl_seterr(err, "%s: model.merges[%d]: token \"%.*s\" is not in the vocab", label, rank, badlen, bad);
            free(joined);
            return -1;
        }
        merge_insert(t, ia, ib, rank, im);
    }
    free(joined);
    return 0;
oom:
    free(joined);
    qvl_seterr(err, "%s: out of memory", label);
    return -1;
}

static const char *json_type(const cJSON *o) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(type) ? type->valuestring : "";
}

static int json_flag(const cJSON *o, const char *key) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static int load_vocab(qvl_tokenizer *t, const cJSON *vocab, const cJSON *added, const char *label, char *err) {
    const uint32_t *b2c = t->byte_cp;
    int16_t c2b[BYTE_LEVEL_CPS];
    byte_level_inverse(b2c, c2b);
    int maxid = -1, nvocab = 0;
    for (const cJSON *v = vocab->child; v; v = v->next, nvocab++) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= MAX_TOKEN_ID ||
            v->valuedouble != (double)v->valueint) {
            qvl_seterr(err, "%s: model.vocab[\"%s\"] is not a token id", label, v->string);
            return -1;
        }
        if (v->valueint > maxid) maxid = v->valueint;
    }
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= MAX_TOKEN_ID ||
            !cJSON_IsString(content)) {
            qvl_seterr(err, "%s: added_tokens: an entry lacks a valid \"id\" or \"content\"", label);
            return -1;
        }
        /* matching options the Qwen family never sets; refused rather than ignored */
        const char *opts[] = { "lstrip", "rstrip", "single_word" };
        for (int i = 0; i < 3; i++)
            if (json_flag(a, opts[i])) {
                qvl_seterr(err, "%s: added token \"%s\": %s is not supported", label, content->valuestring, opts[i]);
                return -1;
            }
        if (id->valueint > maxid) maxid = id->valueint;
    }
    if (maxid < 0) {
        qvl_seterr(err, "%s: model.vocab is empty", label);
        return -1;
    }
    if (alloc_tables(t, maxid + 1)) goto oom;

    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (t->kind[v->valueint] != KIND_NONE) {
            qvl_seterr(err, "%s: model.vocab: two tokens have id %d", label, v->valueint);
            return -1;
        }
        if (set_token(t, c2b, v->valueint, v->string, KIND_VOCAB)) goto oom;
    }
    t->vocab_mask = table_size((size_t)nvocab) - 1;
    t->vocab_slots = malloc((t->vocab_mask + 1) * sizeof *t->vocab_slots);
    if (!t->vocab_slots) goto oom;
    memset(t->vocab_slots, 0xff, (t->vocab_mask + 1) * sizeof *t->vocab_slots);
    for (const cJSON *v = vocab->child; v; v = v->next) {
        if (vocab_find(t, v->string, strlen(v->string)) >= 0) {
            qvl_seterr(err, "%s: model.vocab: token \"%s\" appears twice", label, v->string);
            return -1;
        }
        vocab_insert(t, v->valueint);
    }

    /* Added tokens: their content is what they decode to, whatever the vocab says. */
    int nadded = added ? cJSON_GetArraySize(added) : 0;
    t->added = calloc((size_t)nadded + 1, sizeof *t->added);
    if (!t->added) goto oom;
    for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
        int id = cJSON_GetObjectItemCaseSensitive(a, "id")->valueint;
        const char *content = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
        int special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special"));
        if (!*content) continue;
        if (set_token(t, c2b, id, content, special ? KIND_SPECIAL : KIND_ADDED)) goto oom;
        t->added[t->nadded++] = (added_token){ t->piece_off[id], t->piece_len[id], id };
        t->added_first[(unsigned char)content[0]] = 1;
    }
    qsort(t->added, (size_t)t->nadded, sizeof *t->added, cmp_added_longest_first);

    for (int b = 0; b < 256; b++) {
        unsigned char ch[4];
        int n = utf8_put(ch, b2c[b]);
        t->byte_id[b] = vocab_find(t, (const char *)ch, (size_t)n);
    }
    return 0;
oom:
    qvl_seterr(err, "%s: out of memory", label);
    return -1;
}

/* GPT-2's split, used when a ByteLevel pre-tokenizer has use_regex = true. */
static const char *GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int compile_regex(qvl_tokenizer *t, const char *pattern, const char *label, char *err) {
    int code;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        qvl_seterr(err, "%s: pre_tokenizer regex does not compile at offset %zu: %s", label, (size_t)at, msg);
        return -1;
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);   /* fails harmlessly where JIT is missing */
    return 0;
}

/* One pre-tokenizer step: a Split with a regex (Isolated) or a ByteLevel. */
static int load_pretokenizer_step(qvl_tokenizer *t, const cJSON *p, const char *label, char *err) {
    const char *type = json_type(p);
    if (!strcmp(type, "Split")) {
        const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
        const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(regex)) {
            qvl_seterr(err, "%s: pre_tokenizer Split: only a \"Regex\" pattern is supported", label);
            return -1;
        }
        if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") || json_flag(p, "invert")) {
            qvl_seterr(err, "%s: pre_tokenizer Split: only behavior \"Isolated\" without invert is supported", label);
            return -1;
        }
        if (t->re) {
            qvl_seterr(err, "%s: pre_tokenizer: more than one split regex is not supported", label);
            return -1;
        }
        return compile_regex(t, regex->valuestring, label, err);
    }
    if (!strcmp(type, "ByteLevel")) {
        if (json_flag(p, "add_prefix_space")) {
            qvl_seterr(err, "%s: pre_tokenizer ByteLevel: add_prefix_space is not supported", label);
            return -1;
        }
        if (json_flag(p, "use_regex")) {
            if (t->re) {
                qvl_seterr(err, "%s: pre_tokenizer: more than one split regex is not supported", label);
                return -1;
            }
            return compile_regex(t, GPT2_PATTERN, label, err);
        }
        return 0;
    }
    qvl_seterr(err, "%s: pre_tokenizer type \"%s\" is not supported (byte-level BPE only)", label, type);
    return -1;
}

static int load_pipeline(qvl_tokenizer *t, const cJSON *root, const char *label, char *err) {
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        if (strcmp(json_type(norm), "NFC")) {
            qvl_seterr(err, "%s: normalizer \"%s\" is not supported (NFC or none)", label, json_type(norm));
            return -1;
        }
        t->nfc = 1;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (!pre || cJSON_IsNull(pre)) {
        qvl_seterr(err, "%s: no pre_tokenizer (a byte-level BPE tokenizer has one)", label);
        return -1;
    }
    if (!strcmp(json_type(pre), "Sequence")) {
        const cJSON *steps = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
        int has_byte_level = 0;
        for (const cJSON *s = steps ? steps->child : NULL; s; s = s->next) {
            if (load_pretokenizer_step(t, s, label, err)) return -1;
            has_byte_level |= !strcmp(json_type(s), "ByteLevel");
        }
        if (!has_byte_level) {
            qvl_seterr(err, "%s: pre_tokenizer has no ByteLevel step (byte-level BPE only)", label);
            return -1;
        }
    } else if (!strcmp(json_type(pre), "ByteLevel")) {
        if (load_pretokenizer_step(t, pre, label, err)) return -1;
    } else {
        qvl_seterr(err, "%s: pre_tokenizer type \"%s\" is not supported (byte-level BPE only)", label, json_type(pre));
        return -1;
    }
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (dec && !cJSON_IsNull(dec) && strcmp(json_type(dec), "ByteLevel")) {
        qvl_seterr(err, "%s: decoder \"%s\" is not supported (ByteLevel only)", label, json_type(dec));
        return -1;
    }
    return 0;
}

/* The BPE model's options that change the ids must have their plain values. */
static int check_model_options(const cJSON *model, const char *label, char *err) {
    const char *type = json_type(model);
    if (*type && strcmp(type, "BPE")) {
        qvl_seterr(err, "%s: model type \"%s\" is not supported (BPE only)", label, type);
        return -1;
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0) {
        qvl_seterr(err, "%s: model.dropout is not supported", label);
        return -1;
    }
    if (json_flag(model, "byte_fallback")) {
        qvl_seterr(err, "%s: model.byte_fallback is not supported", label);
        return -1;
    }
    const char *affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (cJSON_IsString(a) && *a->valuestring) {
            qvl_seterr(err, "%s: model.%s is not supported", label, affixes[i]);
            return -1;
        }
    }
    return 0;
}

qvl_tokenizer *tok_load_json(const char *json, size_t len, const char *label, char *err) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0;
        qvl_seterr(err, "%s: not valid JSON (near byte %zu)", label, off);
        return NULL;
    }
    qvl_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        qvl_seterr(err, "%s: out of memory", label);
        cJSON_Delete(root);
        return NULL;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    byte_level_table(t->byte_cp);
    if (!cJSON_IsObject(model) || !cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        qvl_seterr(err, "%s: no BPE model (model.vocab object and model.merges array)", label);
        goto fail;
    }
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        qvl_seterr(err, "%s: added_tokens is not an array", label);
        goto fail;
    }
    if (check_model_options(model, label, err)) goto fail;
    t->ignore_merges = json_flag(model, "ignore_merges");
    if (load_vocab(t, vocab, cJSON_IsArray(added) ? added : NULL, label, err)) goto fail;
    if (load_merges(t, merges, label, err)) goto fail;
    if (load_pipeline(t, root, label, err)) goto fail;
    cJSON_Delete(root);
    return t;
fail:
    cJSON_Delete(root);
    tok_free(t);
    return NULL;
}

qvl_tokenizer *tok_load_file(const char *path, char *err) {
    size_t len;
    char *json = qvl_read_file(path, &len, err);
    if (!json) return NULL;
    qvl_tokenizer *t = tok_load_json(json, len, path, err);
    free(json);
    return t;
}

qvl_tokenizer *tok_load_source(const qvl_source *src, char *err) {
    char *json;
    size_t len;
    char label[1024];
    source_path(src, "tokenizer.json", label, sizeof label);
    int rc = source_read(src, "tokenizer.json", &json, &len, err);
    if (rc == 0) qvl_seterr(err, "%s: no tokenizer.json in the model", label);
    if (rc <= 0) return NULL;
    qvl_tokenizer *t = tok_load_json(json, len, label, err);
    free(json);
    return t;
}

void tok_free(qvl_tokenizer *t) {
    if (!t) return;
    free(t->kind);
    free(t->piece_off);
    free(t->piece_len);
    free(t->bytes_off);
    free(t->bytes_len);
    free(t->arena);
    free(t->vocab_slots);
    free(t->merges);
    free(t->added);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

/* ---------------------------------------------------------------- encoding */

/* Working memory of one tok_encode call (so that a tokenizer stays read-only). */
typedef struct {
    int *sym, *prev, *next;       /* BPE symbols as a linked list over the piece's bytes */
    uint64_t *heap;               /* candidate merges: rank << 32 | position */
    size_t cap, nheap;
    unsigned char *norm;          /* NFC output */
    size_t norm_cap;
    unsigned char *spelled;       /* a piece in byte-level characters (ignore_merges) */
    size_t spelled_cap;
    pcre2_match_data *md;
} scratch;

static int grow_bytes(unsigned char **p, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    unsigned char *q = realloc(*p, c);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int scratch_symbols(scratch *sc, size_t n) {
    if (n <= sc->cap) return 0;
    size_t c = sc->cap ? sc->cap : 256;
    while (c < n) c *= 2;
    int *a = realloc(sc->sym, c * sizeof(int)); if (!a) return -1; sc->sym = a;
    a = realloc(sc->prev, c * sizeof(int)); if (!a) return -1; sc->prev = a;
    a = realloc(sc->next, c * sizeof(int)); if (!a) return -1; sc->next = a;
    /* each merge adds at most two candidates: n initial + 2n later */
    uint64_t *h = realloc(sc->heap, 3 * c * sizeof(uint64_t)); if (!h) return -1; sc->heap = h;
    sc->cap = c;
    return 0;
}

static void heap_push(scratch *sc, uint64_t v) {
    size_t i = sc->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (sc->heap[parent] <= v) break;
        sc->heap[i] = sc->heap[parent];
        i = parent;
    }
    sc->heap[i] = v;
}

static uint64_t heap_pop(scratch *sc) {
    uint64_t top = sc->heap[0], last = sc->heap[--sc->nheap];
    size_t i = 0, n = sc->nheap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && sc->heap[c + 1] < sc->heap[c]) c++;
        if (last <= sc->heap[c]) break;
        sc->heap[i] = sc->heap[c];
        i = c;
    }
    if (n) sc->heap[i] = last;
    return top;
}

static void push_candidate(const qvl_tokenizer *t, scratch *sc, int pos) {
    int nx = sc->next[pos];
    if (nx < 0) return;
    const merge_slot *m = merge_find(t, sc->sym[pos], sc->sym[nx]);
    if (m) heap_push(sc, (uint64_t)(uint32_t)m->rank << 32 | (uint32_t)pos);
}

/* A whole piece that is itself in the vocab, for ignore_merges tokenizers. */
static int whole_piece_id(const qvl_tokenizer *t, scratch *sc, const unsigned char *p, size_t n) {
    if (grow_bytes(&sc->spelled, &sc->spelled_cap, 2 * n)) return -2;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += (size_t)utf8_put(sc->spelled + len, t->byte_cp[p[i]]);
    return vocab_find(t, (const char *)sc->spelled, len);
}

/* BPE over one pre-token piece: bytes in, ids appended. */
static int bpe_piece(const qvl_tokenizer *t, scratch *sc, const unsigned char *p, size_t n, tok_ids *out) {
    if (t->ignore_merges) {
        int id = whole_piece_id(t, sc, p, n);
        if (id == -2) return -1;
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (n == 1) return t->byte_id[p[0]] >= 0 ? tok_ids_push(out, t->byte_id[p[0]]) : 0;
    if (scratch_symbols(sc, n)) return -1;
    /* Bytes without a vocab entry are dropped, as a BPE model without unk_token does. */
    int head = -1, last = -1;
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[p[i]];
        sc->sym[i] = id;
        sc->next[i] = -1;
        if (id < 0) continue;
        sc->prev[i] = last;
        if (last >= 0) sc->next[last] = (int)i;
        else head = (int)i;
        last = (int)i;
    }
    sc->nheap = 0;
    for (int i = head; i >= 0; i = sc->next[i]) push_candidate(t, sc, i);
    while (sc->nheap) {
        uint64_t top = heap_pop(sc);
        int pos = (int)(uint32_t)top, rank = (int)(top >> 32);
        if (sc->sym[pos] < 0) continue;                 /* merged into its left neighbour */
        int nx = sc->next[pos];
        if (nx < 0) continue;
        const merge_slot *m = merge_find(t, sc->sym[pos], sc->sym[nx]);
        if (!m || m->rank != rank) continue;            /* stale: a side changed since */
        sc->sym[pos] = m->id;
        sc->sym[nx] = -1;
        sc->next[pos] = sc->next[nx];
        if (sc->next[nx] >= 0) sc->prev[sc->next[nx]] = pos;
        if (sc->prev[pos] >= 0) push_candidate(t, sc, sc->prev[pos]);
        push_candidate(t, sc, pos);
    }
    for (int i = head; i >= 0; i = sc->next[i])
        if (tok_ids_push(out, sc->sym[i])) return -1;
    return 0;
}

/* Splits a normalized stretch with the regex and runs BPE on every piece,
 * matched or not (the gaps are where invalid UTF-8 ends up). */
static int split_and_merge(const qvl_tokenizer *t, scratch *sc, const unsigned char *s, size_t n, tok_ids *out) {
    if (!t->re) return bpe_piece(t, sc, s, n, out);
    size_t pos = 0, from = 0;
    while (from < n) {
        int rc = pcre2_match(t->re, s, n, from, 0, sc->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return -2;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {                   /* an empty match splits nothing */
            int k = utf8_char(s + ms, n - ms);
            from = ms + (size_t)(k > 0 ? k : 1);
            continue;
        }
        if (ms > pos && bpe_piece(t, sc, s + pos, ms - pos, out)) return -1;
        if (bpe_piece(t, sc, s + ms, me - ms, out)) return -1;
        pos = from = me;
    }
    if (pos < n && bpe_piece(t, sc, s + pos, n - pos, out)) return -1;
    return 0;
}

/* NFC of s[0..n) into sc->norm; invalid bytes are copied as they are and
 * normalization runs on each valid stretch between them. */
static int normalize_nfc(scratch *sc, const unsigned char *s, size_t n, size_t *outlen) {
    size_t len = 0;
    if (grow_bytes(&sc->norm, &sc->norm_cap, n + 1)) return -1;
    for (size_t i = 0; i < n;) {
        size_t start = i;
        int ascii = 1, k;
        while (i < n && (k = utf8_char(s + i, n - i)) > 0) {
            ascii &= k == 1;
            i += (size_t)k;
        }
        if (i > start) {
            const unsigned char *run = s + start;
            size_t runlen = i - start;
            uint8_t *mapped = NULL;
            if (!ascii) {                 /* ASCII is its own NFC */
                utf8proc_ssize_t m = utf8proc_map(run, (utf8proc_ssize_t)runlen, &mapped,
                                                  UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (m < 0) return -1;
                run = mapped;
                runlen = (size_t)m;
            }
            if (grow_bytes(&sc->norm, &sc->norm_cap, len + runlen + (n - i) + 1)) { free(mapped); return -1; }
            memcpy(sc->norm + len, run, runlen);
            len += runlen;
            free(mapped);
        }
        if (i < n) {                      /* an invalid byte (or a truncated character) */
            sc->norm[len++] = s[i++];
        }
    }
    *outlen = len;
    return 0;
}

static int encode_stretch(const qvl_tokenizer *t, scratch *sc, const unsigned char *s, size_t n, tok_ids *out) {
    if (n == 0) return 0;
    if (t->nfc) {
        size_t len;
        if (normalize_nfc(sc, s, n, &len)) return -1;
        s = sc->norm;
        n = len;
    }
    return split_and_merge(t, sc, s, n, out);
}

/* The added token that starts at s (longest first), or NULL. */
static const added_token *added_at(const qvl_tokenizer *t, const char *s, size_t n) {
    if (!t->added_first[(unsigned char)s[0]]) return NULL;
    for (int i = 0; i < t->nadded; i++) {
        const added_token *a = &t->added[i];
        if (a->len <= n && !memcmp(s, t->arena + a->off, a->len)) return a;
    }
    return NULL;
}

int tok_encode(const qvl_tokenizer *t, const char *text, size_t len, tok_ids *out, char *err) {
    scratch sc = { 0 };
    int rc = 0;
    sc.md = pcre2_match_data_create(1, NULL);
    if (!sc.md) rc = -1;
    size_t start = 0;
    for (size_t i = 0; i < len && !rc;) {
        const added_token *a = added_at(t, text + i, len - i);
        if (!a) { i++; continue; }
        rc = encode_stretch(t, &sc, (const unsigned char *)text + start, i - start, out);
        if (!rc) rc = tok_ids_push(out, a->id);
        i += a->len;
        start = i;
    }
    if (!rc) rc = encode_stretch(t, &sc, (const unsigned char *)text + start, len - start, out);
    if (rc == -2) qvl_seterr(err, "tokenizer: the split regex failed on the input");
    else if (rc) qvl_seterr(err, "tokenizer: out of memory encoding %zu bytes", len);
    free(sc.sym);
    free(sc.prev);
    free(sc.next);
    free(sc.heap);
    free(sc.norm);
    free(sc.spelled);
    pcre2_match_data_free(sc.md);
    return rc ? -1 : 0;
}

/* ---------------------------------------------------------------- decoding, lookups */

int tok_vocab_size(const qvl_tokenizer *t) { return t->nslots; }

static int has_token(const qvl_tokenizer *t, int id) {
    return id >= 0 && id < t->nslots && t->kind[id] != KIND_NONE;
}

const char *tok_id_to_piece(const qvl_tokenizer *t, int id) {
    return has_token(t, id) ? t->arena + t->piece_off[id] : NULL;
}

const char *tok_token_bytes(const qvl_tokenizer *t, int id, size_t *len) {
    if (!has_token(t, id)) { if (len) *len = 0; return NULL; }
    if (len) *len = t->bytes_len[id];
    return t->arena + t->bytes_off[id];
}

int tok_piece_to_id(const qvl_tokenizer *t, const char *piece) {
    int id = tok_special_id(t, piece);
    return id >= 0 ? id : vocab_find(t, piece, strlen(piece));
}

int tok_special_id(const qvl_tokenizer *t, const char *text) {
    size_t n = strlen(text);
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && !memcmp(t->arena + t->added[i].off, text, n)) return t->added[i].id;
    return -1;
}

int tok_is_special(const qvl_tokenizer *t, int id) {
    return has_token(t, id) && t->kind[id] == KIND_SPECIAL;
}

char *tok_decode(const qvl_tokenizer *t, const int *ids, size_t n, int skip_special, size_t *len, char *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        if (has_token(t, ids[i]) && !(skip_special && t->kind[ids[i]] == KIND_SPECIAL)) total += t->bytes_len[ids[i]];
    char *s = malloc(total + 1);
    if (!s) {
        qvl_seterr(err, "tokenizer: out of memory decoding %zu tokens", n);
        return NULL;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int id = ids[i];
        if (!has_token(t, id) || (skip_special && t->kind[id] == KIND_SPECIAL)) continue;
        memcpy(s + off, t->arena + t->bytes_off[id], t->bytes_len[id]);
        off += t->bytes_len[id];
    }
    s[off] = 0;
    if (len) *len = off;
    return s;
}

/* ---------------------------------------------------------------- streaming decoder */

void tok_stream_init(tok_stream *s, const qvl_tokenizer *t, int skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->skip_special = skip_special;
}

void tok_stream_free(tok_stream *s) {
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

static const char REPLACEMENT[] = "\xEF\xBF\xBD";   /* U+FFFD */

/* Emits the complete characters of pending + bytes; keeps an incomplete tail.
 * The output buffer is also the input's staging area: the input is copied to
 * its end, and output (at most 3 bytes per input byte) never overtakes it. */
static const char *stream_emit(tok_stream *s, const char *bytes, size_t n, size_t *len) {
    size_t in = (size_t)s->npending + n, need = 4 * in + 1;
    if (need > s->cap) {
        char *b = realloc(s->buf, need);
        if (!b) return NULL;
        s->buf = b;
        s->cap = need;
    }
    unsigned char *src = (unsigned char *)s->buf + s->cap - in;
    memcpy(src, s->pending, (size_t)s->npending);
    memcpy(src + s->npending, bytes, n);
    size_t o = 0, i = 0;
    s->npending = 0;
    while (i < in) {
        int k = utf8_char(src + i, in - i);
        if (k == 0) {                         /* a character still arriving */
            s->npending = (int)(in - i);
            memmove(s->pending, src + i, in - i);
            break;
        }
        if (k > 0) {
            memmove(s->buf + o, src + i, (size_t)k);
            o += (size_t)k, i += (size_t)k;
        } else {
            memcpy(s->buf + o, REPLACEMENT, 3);
            o += 3, i += (size_t)-k;
        }
    }
    s->buf[o] = 0;
    *len = o;
    return s->buf;
}

const char *tok_stream_push(tok_stream *s, int id, size_t *len) {
    size_t n = 0;
    const char *bytes = tok_token_bytes(s->tok, id, &n);
    if (!bytes || (s->skip_special && tok_is_special(s->tok, id))) bytes = "", n = 0;
    return stream_emit(s, bytes, n, len);
}

const char *tok_stream_flush(tok_stream *s, size_t *len) {
    if (!s->npending) return stream_emit(s, "", 0, len);
    s->npending = 0;                          /* a valid but unfinished start: one U+FFFD */
    return stream_emit(s, REPLACEMENT, 3, len);
}
