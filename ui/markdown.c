/* markdown.c - Markdown basics to styled, wrapped lines (see markdown.h).
 *
 * Two passes per source line: first the line is "cooked" into a logical line
 * (markers removed, one style byte per text byte, tabs and control characters
 * made printable), then the logical line is cut into pieces that fit the
 * width.  Keeping the passes apart keeps the wrapping blind to Markdown. */
#include "markdown.h"

#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include <utf8proc.h>

#define TAB_CELLS 4

int md_utf8_decode(const char *s, int len, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    int n = u[0] < 0x80 ? 1 : u[0] < 0xC2 ? 0 : u[0] < 0xE0 ? 2 : u[0] < 0xF0 ? 3 : u[0] < 0xF5 ? 4 : 0;
    if (n == 1) { *cp = u[0]; return 1; }
    if (n == 0 || n > len) { *cp = 0xFFFD; return 1; }
    uint32_t c = u[0] & (0x7F >> n);
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) { *cp = 0xFFFD; return 1; }
        c = (c << 6) | (u[i] & 0x3F);
    }
    /* overlong forms, surrogates and values past U+10FFFF are not characters */
    if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10FFFF)) || (c >= 0xD800 && c <= 0xDFFF)) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = c;
    return n;
}

int md_char_width(uint32_t cp) {
    if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)) return 0;
    if (cp < 0x7F) return 1;
    /* The terminal's own idea first (ncurses uses the same), then Unicode's
     * when the locale cannot tell (a non-UTF-8 locale says -1). */
    int w = wcwidth((wchar_t)cp);
    if (w < 0) w = utf8proc_charwidth((utf8proc_int32_t)cp);
    return w < 0 ? 0 : w > 2 ? 2 : w;
}

int md_text_width(const char *s, int len) {
    int w = 0;
    for (int i = 0; i < len;) {
        uint32_t cp;
        i += md_utf8_decode(s + i, len - i, &cp);
        w += md_char_width(cp);
    }
    return w;
}

/* ------------------------------------------------------------ buffers */

typedef struct {
    char *text;
    unsigned char *style;
    int len, cap;
} logical;

static int grow(logical *l, int more) {
    if (l->len + more <= l->cap) return 0;
    int cap = l->cap ? l->cap : 64;
    while (cap < l->len + more) cap *= 2;
    char *t = realloc(l->text, (size_t)cap);
    if (!t) return -1;
    l->text = t;
    unsigned char *s = realloc(l->style, (size_t)cap);
    if (!s) return -1;
    l->style = s;
    l->cap = cap;
    return 0;
}

/* Appends one character (UTF-8 bytes) in a style, making it printable. */
static int put_char(logical *l, const char *s, int n, uint32_t cp, int style) {
    static const char replacement[] = "\xEF\xBF\xBD";
    if (cp == '\t') {
        if (grow(l, TAB_CELLS)) return -1;
        for (int i = 0; i < TAB_CELLS; i++) { l->text[l->len] = ' '; l->style[l->len++] = (unsigned char)style; }
        return 0;
    }
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) return 0; /* ESC and friends: never to the terminal */
    if (cp == 0xFFFD) { s = replacement; n = 3; }
    if (grow(l, n)) return -1;
    memcpy(l->text + l->len, s, (size_t)n);
    memset(l->style + l->len, style, (size_t)n);
    l->len += n;
    return 0;
}

static int push_line(md_lines *out, const logical *l, int from, int to) {
    if (out->n == out->cap) {
        int cap = out->cap ? out->cap * 2 : 16;
        md_line *lines = realloc(out->lines, (size_t)cap * sizeof *lines);
        if (!lines) return -1;
        out->lines = lines;
        out->cap = cap;
    }
    md_line *m = &out->lines[out->n];
    int len = to - from;
    m->text = malloc((size_t)len + 1);
    m->style = malloc((size_t)len + 1);
    if (!m->text || !m->style) { free(m->text); free(m->style); return -1; }
    memcpy(m->text, l->text + from, (size_t)len);
    memcpy(m->style, l->style + from, (size_t)len);
    m->text[len] = 0;
    m->style[len] = 0;
    m->len = len;
    m->width = md_text_width(m->text, len);
    out->n++;
    return 0;
}

/* Cuts a logical line into lines of at most `width` cells.  Word mode breaks
 * after the last space that fits (the space itself is dropped); a word longer
 * than the width, or any text in character mode, breaks where it must. */
static int wrap(const logical *l, int width, int words, md_lines *out) {
    if (l->len == 0) return push_line(out, l, 0, 0);
    int start = 0, x = 0;
    int space_at = -1, x_after_space = 0;
    for (int i = 0; i < l->len;) {
        uint32_t cp;
        int n = md_utf8_decode(l->text + i, l->len - i, &cp);
        int w = md_char_width(cp);
        while (x + w > width && x > 0) {
            if (words && space_at > start) {
                if (push_line(out, l, start, space_at)) return -1;
                start = space_at + 1;
                x -= x_after_space;
            } else {
                if (push_line(out, l, start, i)) return -1;
                start = i;
                x = 0;
            }
            space_at = -1;
        }
        x += w;
        if (cp == ' ') { space_at = i; x_after_space = x; }
        i += n;
    }
    return push_line(out, l, start, l->len);
}

/* ------------------------------------------------------------ Markdown */

static int is_fence(const char *s, int len) {
    int i = 0;
    while (i < len && i < 3 && s[i] == ' ') i++;
    return len - i >= 3 && !strncmp(s + i, "```", 3);
}

/* Inline Markdown of one line outside code blocks. */
static int cook_inline(const char *s, int len, int base, logical *l) {
    int bold = 0, code = 0, i = 0;
    int heading = 0;
    while (heading < len && heading < 6 && s[heading] == '#') heading++;
    if (heading > 0 && heading < len && s[heading] == ' ') { i = heading + 1; bold = 1; }
    else heading = 0;
    while (i < len) {
        if (!code && i + 1 < len && s[i] == '*' && s[i + 1] == '*') {
            if (!heading) bold = !bold;
            i += 2;
            continue;
        }
        if (s[i] == '`') { code = !code; i++; continue; }
        uint32_t cp;
        int n = md_utf8_decode(s + i, len - i, &cp);
        int style = base | (bold ? MD_BOLD : 0) | (code ? MD_CODE : 0);
        if (put_char(l, s + i, n, cp, style)) return -1;
        i += n;
    }
    return 0;
}

static int cook_verbatim(const char *s, int len, int style, logical *l) {
    for (int i = 0; i < len;) {
        uint32_t cp;
        int n = md_utf8_decode(s + i, len - i, &cp);
        if (put_char(l, s + i, n, cp, style)) return -1;
        i += n;
    }
    return 0;
}

int md_layout(const char *text, int width, int markdown, int base_style, md_lines *out) {
    if (!text || !*text) return 0;
    if (width < 1) width = 1;
    logical l = { 0 };
    int in_fence = 0, rc = 0;
    const char *p = text;
    for (;;) {
        const char *nl = strchr(p, '\n');
        int len = nl ? (int)(nl - p) : (int)strlen(p);
        l.len = 0;
        int words = 1;
        if (markdown && is_fence(p, len)) {
            rc = cook_verbatim(p, len, base_style | MD_FENCE, &l);
            in_fence = !in_fence;
            words = 0;
        } else if (markdown && in_fence) {
            rc = cook_verbatim(p, len, base_style | MD_BLOCK, &l);
            words = 0;
        } else if (markdown) {
            rc = cook_inline(p, len, base_style, &l);
        } else {
            rc = cook_verbatim(p, len, base_style, &l);
        }
        if (rc == 0) rc = wrap(&l, width, words, out);
        if (rc || !nl) break;
        p = nl + 1;
    }
    free(l.text);
    free(l.style);
    return rc;
}

void md_lines_free(md_lines *l) {
    for (int i = 0; i < l->n; i++) { free(l->lines[i].text); free(l->lines[i].style); }
    free(l->lines);
    l->lines = NULL;
    l->n = l->cap = 0;
}
