/* complete.h - the two input conveniences the chat and the line mode share:
 * Tab completion of the path after "/image ", and recognising a pasted (or
 * dropped) image file path, which attaches the image instead of sending text.
 *
 * Terminals paste a dropped file as a path, often quoted ('...' or "..."),
 * with backslash-escaped spaces, or as a file:// URL; all are understood. */
#ifndef QVL_COMPLETE_H
#define QVL_COMPLETE_H

typedef struct {
    char *completed;    /* the longest unambiguous completion of the prefix (malloc'd) */
    char **matches;     /* every matching path when more than one (malloc'd, sorted) */
    int nmatches;       /* how many entries matched in all */
} path_completion;

/* Completes a path prefix ("~/" allowed, kept as typed).  A single directory
 * match gets a trailing '/'.  Returns 0 (completed may equal the prefix), or
 * -1 when nothing matches or the directory cannot be read. */
int complete_path(const char *prefix, path_completion *out);
void path_completion_free(path_completion *c);

/* If the whole input is one existing image file's path (see above; the name
 * must end in an image extension), returns it cleaned up (malloc'd); else NULL. */
char *pasted_image_path(const char *input);

/* 1 when the file name ends in an extension qvl can decode (png, jpg, ...). */
int has_image_extension(const char *path);

#endif
