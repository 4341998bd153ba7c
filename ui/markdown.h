/* markdown.h - message text laid out for the terminal: basic Markdown, wrapped.
 *
 * The transcript shows model replies, and models write Markdown.  A full
 * renderer is not the point; the basics that make a reply readable are:
 * **bold**, `inline code`, ``` fenced blocks ``` (their marker lines kept, dim)
 * and "# headings" (bold).  The markers of bold and inline code are removed;
 * everything else shows as written.  Styles reset at each line end, so a reply
 * that is still streaming, or an unmatched marker, never colours the rest.
 *
 * Layout wraps at word boundaries (code blocks: at any character) to a width in
 * terminal cells, counting wide characters (CJK, emoji) as two cells and
 * combining marks as none; tabs become spaces, other control characters and bad
 * UTF-8 are replaced.  No curses here: the result is plain lines with one style
 * byte per text byte, so it can be tested on its own and drawn by anyone. */
#ifndef QVL_MARKDOWN_H
#define QVL_MARKDOWN_H

#include <stdint.h>

/* Style bits, one set per byte of a laid-out line. */
enum {
    MD_PLAIN = 0,
    MD_BOLD = 1,        /* **text** and headings */
    MD_CODE = 2,        /* `inline code` */
    MD_BLOCK = 4,       /* inside a fenced block */
    MD_FENCE = 8,       /* the ``` marker lines */
    MD_DIM = 16         /* caller's base style: reasoning of thinking models */
};

typedef struct {
    char *text;             /* UTF-8, NUL-terminated, no newline */
    unsigned char *style;   /* one per byte of text */
    int len;                /* bytes */
    int width;              /* cells */
} md_line;

typedef struct {
    md_line *lines;
    int n, cap;
} md_lines;

/* Lays out `text` (Markdown when markdown != 0, else plain) into lines of at
 * most `width` cells (>= 1), each byte's style ORed with base_style; appends to
 * *out.  Empty text gives no line; "\n" separates lines.  0, or -1 out of memory. */
int md_layout(const char *text, int width, int markdown, int base_style, md_lines *out);
void md_lines_free(md_lines *l);

/* Cells a code point takes: 0 (combining, control), 1, or 2 (wide). */
int md_char_width(uint32_t cp);
/* Decodes one UTF-8 character at s (len bytes available): its length in bytes
 * (>= 1; a bad sequence counts as one byte and gives U+FFFD). */
int md_utf8_decode(const char *s, int len, uint32_t *cp);
/* Cells a UTF-8 string takes. */
int md_text_width(const char *s, int len);

#endif
