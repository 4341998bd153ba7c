/* image.h - pictures in, pixel patches out: decoding and Qwen-VL preprocessing.
 *
 * Decoding gives what Pillow (and so transformers) sees: PNG through libpng,
 * JPEG through libjpeg-turbo with its default settings (ISLOW DCT, fancy
 * upsampling) and the EXIF orientation applied, everything else stb_image
 * understands (BMP, GIF first frame, TGA, PNM, PSD, PIC) through stb_image.
 * The result is always 8-bit RGB; grayscale and palette images are expanded,
 * alpha is composited over white or dropped (see qvl_alpha).
 *
 * Preprocessing is the Qwen2-VL image processor of transformers:
 * smart_resize, antialiased bicubic resize on uint8 (torchvision/ATen, which
 * follows Pillow), rescale and normalize, the frame repeated to
 * temporal_patch_size, patches flattened in the vision tower's order. */
#ifndef QVL_IMAGE_H
#define QVL_IMAGE_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

/* The largest picture decoded or produced: 2^28 pixels (768 MB of RGB). */
#define QVL_IMAGE_MAX_PIXELS (1L << 28)
/* smart_resize refuses images more elongated than this. */
#define QVL_IMAGE_MAX_RATIO 200

/* An RGB picture: width*height*3 bytes, rows top to bottom, no padding. */
typedef struct {
    int width, height;
    uint8_t *rgb;
} qvl_image;

typedef enum {
    /* Composite over white, as Qwen's own loader (qwen-vl-utils to_rgb) does:
     * a transparent PNG reads as it looks.  The default. */
    QVL_ALPHA_WHITE = 0,
    /* Ignore the alpha channel, as PIL's convert("RGB") does when an RGBA
     * image is handed to the transformers processor directly. */
    QVL_ALPHA_DROP = 1
} qvl_alpha;

/* Decoding.  The format comes from the content, not the name.  `label` names
 * the image in errors (a path, or e.g. "data: URL"). */
int image_load_file(const char *path, qvl_alpha alpha, qvl_image *img, char *err);
int image_load_mem(const void *data, size_t size, const char *label, qvl_alpha alpha,
                   qvl_image *img, char *err);
/* A data: URL ("data:image/png;base64,...."); only base64 payloads are
 * accepted, the media type is not trusted (the content decides). */
int image_load_data_url(const char *url, qvl_alpha alpha, qvl_image *img, char *err);
void image_free(qvl_image *img);


/* The Qwen2-VL smart_resize: the size (multiples of factor) the model sees
 * an height x width image at.  Python's round-half-to-even to the nearest
 * multiple; above max_pixels scaled down with floor, below min_pixels scaled
 * up with ceil; never less than one factor per side.  -1 with err set for an
 * aspect ratio above 200 or a non-positive argument. */
int image_smart_resize(int height, int width, int factor, long min_pixels, long max_pixels,
                       int *out_h, int *out_w, char *err);

/* Antialiased bicubic resize, bit-exact with torchvision's
 * resize(uint8, BICUBIC, antialias=True) on CPU.  dst is allocated. */
int image_resize(const qvl_image *src, int out_w, int out_h, qvl_image *dst, char *err);

/* The vision tower's input for one image. */
typedef struct {
    int grid_t, grid_h, grid_w;   /* in patches */
    int n_patches;                /* grid_t * grid_h * grid_w */
    int patch_dim;                /* 3 * temporal_patch * patch * patch */
    float *pixels;                /* [n_patches, patch_dim] */
    qvl_image resized;            /* the picture as the model sees it */
} qvl_pixels;

/* smart_resize + resize + normalize + patchify with the settings of
 * preprocessor_config.json. */
int image_preprocess(const qvl_image *img, const qvl_preproc *p, qvl_pixels *out, char *err);
void pixels_free(qvl_pixels *px);

#endif
