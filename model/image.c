/* image.c - decoding pictures and turning them into Qwen-VL pixel patches.
 *
 * The model was trained on what the Hugging Face stack feeds it, so every step
 * here reproduces that stack rather than doing "something reasonable":
 *
 *   decode      Pillow decodes PNG with libpng and JPEG with libjpeg(-turbo)
 *               at default settings, so we call the same libraries the same
 *               way and get the same pixels.  transformers' load_image applies
 *               the EXIF orientation (ImageOps.exif_transpose); so do we, for
 *               JPEG (APP1) and PNG (eXIf).  Other formats go to stb_image.
 *   to RGB      grey and palette expand to RGB; alpha is composited over white
 *               (qwen-vl-utils) or dropped (PIL convert("RGB")).
 *   size        smart_resize of the Qwen2-VL image processor, in the same
 *               floating-point steps as the Python code.
 *   resize      torchvision resize(BICUBIC, antialias=True) on a uint8 tensor,
 *               which runs ATen's separable uint8 kernel: Pillow's filter
 *               (Keys cubic, a = -0.5, support widened by the scale when
 *               shrinking), weights rounded to int16 with a per-axis precision,
 *               the horizontal pass first, uint8 rounding and clamping after
 *               each pass.
 *   patches     (x - mean/rescale) / (std/rescale) in float32, as the fused
 *               torchvision normalize computes it, the frame repeated to
 *               temporal_patch_size, then the (t, h/m, w/m, m, m, C, T, P, P)
 *               order the vision tower's patch embedding expects.
 *
 * Hostile files: the size is checked against QVL_IMAGE_MAX_PIXELS from the
 * header, before any pixel buffer exists.  libpng and libjpeg report errors by
 * longjmp; every setjmp lives in a small function whose state is in a struct
 * owned by its caller, so the caller can free whatever was allocated.  Neither
 * library is allowed to print. */
#include "image.h"
#include "dataurl.h"
#include "common.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <png.h>
#include <jpeglib.h>
#include <jerror.h>

/* stb_image for everything that is not PNG or JPEG (those are sniffed first
 * and never reach it).  Memory input only. */
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_NO_PNG
#define STBI_NO_JPEG
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include <stb_image.h>

/* ---------------------------------------------------------------- helpers */

static int check_size(long long w, long long h, const char *label, char *err) {
    if (w <= 0 || h <= 0) {
        qvl_seterr(err, "%s: invalid image size %lldx%lld", label, w, h);
        return -1;
    }
    if (w * h > QVL_IMAGE_MAX_PIXELS) {
        qvl_seterr(err, "%s: image is %lldx%lld, more than the %ld pixels allowed",
                   label, w, h, QVL_IMAGE_MAX_PIXELS);
        return -1;
    }
    return 0;
}

/* round(v / 255) for v in [0, 255*255]: the blend Pillow's paste computes. */
static inline uint8_t div255(unsigned v) {
    return (uint8_t)((v + 127) / 255);
}

/* Converts n pixels of ch channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) to
 * RGB.  Works in place when ch >= 3 (the output never overtakes the input). */
static void pixels_to_rgb(const uint8_t *src, size_t n, int ch, qvl_alpha alpha, uint8_t *dst) {
    int has_alpha = (ch == 2 || ch == 4);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = src + i * (size_t)ch;
        uint8_t r, g, b;
        if (ch <= 2) r = g = b = s[0];
        else { r = s[0]; g = s[1]; b = s[2]; }
        if (has_alpha && alpha == QVL_ALPHA_WHITE) {
            unsigned a = s[ch - 1], bg = 255u * (255u - a);
            r = div255(r * a + bg);
            g = div255(g * a + bg);
            b = div255(b * a + bg);
        }
        uint8_t *d = dst + i * 3;
        d[0] = r; d[1] = g; d[2] = b;
    }
}

/* ------------------------------------------------------ EXIF orientation */

static unsigned rd16(const uint8_t *p, int le) {
    return le ? (unsigned)(p[0] | p[1] << 8) : (unsigned)(p[0] << 8 | p[1]);
}

static uint32_t rd32(const uint8_t *p, int le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block, or 1
 * (as stored) when absent or unreadable: a broken EXIF block is not worth
 * refusing a picture for. */
static int exif_orientation(const uint8_t *p, size_t n) {
    if (n < 8) return 1;
    int le;
    if (p[0] == 'I' && p[1] == 'I') le = 1;
    else if (p[0] == 'M' && p[1] == 'M') le = 0;
    else return 1;
    if (rd16(p + 2, le) != 42) return 1;
    uint32_t ifd = rd32(p + 4, le);
    if (ifd > n - 2) return 1;
    unsigned count = rd16(p + ifd, le);
    for (unsigned i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > n) break;
        if (rd16(p + e, le) != 0x0112) continue;
        if (rd16(p + e + 2, le) != 3) return 1;      /* SHORT */
        unsigned v = rd16(p + e + 8, le);
        return (v >= 1 && v <= 8) ? (int)v : 1;
    }
    return 1;
}

/* Turns an image stored with EXIF orientation o into the upright picture, as
 * Pillow's exif_transpose does (2 mirror, 3 rotate 180, 4 flip, 5 transpose,
 * 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise). */
static int apply_orientation(qvl_image *img, int o, const char *label, char *err) {
    if (o <= 1 || o > 8) return 0;
    int w = img->width, h = img->height;
    int swap = o >= 5;
    int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *out = malloc((size_t)w * h * 3);
    if (!out) {
        qvl_seterr(err, "%s: out of memory rotating a %dx%d image", label, w, h);
        return -1;
    }
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;   /* where output (x, y) comes from */
            switch (o) {
            case 2: sx = w - 1 - x; sy = y; break;
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;
            case 4: sx = x; sy = h - 1 - y; break;
            case 5: sx = y; sy = x; break;
            case 6: sx = y; sy = h - 1 - x; break;
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;
            default: sx = w - 1 - y; sy = x; break;   /* 8 */
            }
            memcpy(out + ((size_t)y * ow + x) * 3, img->rgb + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    free(img->rgb);
    img->rgb = out;
    img->width = ow;
    img->height = oh;
    return 0;
}

/* -------------------------------------------------------------------- PNG */

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    const char *label;
    char msg[200];            /* libpng's error text */
    int too_big;              /* the size check failed (err already set) */
    char *err;
    qvl_alpha alpha;
    uint8_t *pixels;          /* owned here until handed to the image */
    png_bytep *rows;
    int width, height, orientation;
} png_job;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_job *job = png_get_error_ptr(png);
    snprintf(job->msg, sizeof job->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png; (void)msg;     /* ancillary trouble: Pillow ignores it too */
}

static void png_read_mem(png_structp png, png_bytep out, png_size_t n) {
    png_job *job = png_get_io_ptr(png);
    if (n > job->size - job->pos) png_error(png, "file is truncated");
    memcpy(out, job->data + job->pos, n);
    job->pos += n;
}

/* Everything that may longjmp.  Allocations go into job, which the caller
 * frees whatever happens. */
static int png_decode_into(png_structp png, png_infop info, png_job *job) {
    if (setjmp(png_jmpbuf(png))) return -1;
    png_set_read_fn(png, job, png_read_mem);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (check_size(w, h, job->label, job->err) != 0) {
        job->too_big = 1;
        return -1;
    }
#ifdef PNG_eXIf_SUPPORTED
    png_uint_32 exif_len = 0;
    png_bytep exif = NULL;
    if (png_get_eXIf_1(png, info, &exif_len, &exif) && exif)
        job->orientation = exif_orientation(exif, exif_len);
#endif
    /* 8-bit RGB or RGBA whatever is stored: palette and low-depth grey expand,
     * tRNS becomes alpha, 16-bit keeps its high byte (as Pillow's RGB;16B). */
    png_set_expand(png);
    png_set_strip_16(png);
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if ((ch != 3 && ch != 4) || rowbytes != (size_t)w * ch)
        png_error(png, "unexpected pixel layout after expansion");
    job->pixels = malloc(rowbytes * h);
    job->rows = malloc(sizeof(png_bytep) * h);
    if (!job->pixels || !job->rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) job->rows[y] = job->pixels + rowbytes * y;
    png_read_image(png, job->rows);

    pixels_to_rgb(job->pixels, (size_t)w * h, ch, job->alpha, job->pixels);
    job->width = (int)w;
    job->height = (int)h;
    return 0;
}

/* A decoded picture into img: trims the buffer to RGB and applies the EXIF orientation. */
static int finish_decoded(qvl_image *img, uint8_t *pixels, int width, int height, int orientation,
                          const char *label, char *err) {
    uint8_t *rgb = realloc(pixels, (size_t)width * height * 3);
    img->rgb = rgb ? rgb : pixels;
    img->width = width;
    img->height = height;
    if (apply_orientation(img, orientation, label, err) != 0) {
        image_free(img);
        return -1;
    }
    return 0;
}

static int decode_png(const uint8_t *data, size_t size, const char *label, qvl_alpha alpha,
                      qvl_image *img, char *err) {
    png_job job = { .data = data, .size = size, .label = label, .err = err,
                    .alpha = alpha, .orientation = 1 };
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        qvl_seterr(err, "%s: out of memory starting the PNG decoder", label);
        return -1;
    }
    int rc = png_decode_into(png, info, &job);
    png_destroy_read_struct(&png, &info, NULL);
    free(job.rows);
    if (rc != 0) {
        free(job.pixels);
        if (!job.too_big) qvl_seterr(err, "%s: invalid PNG: %s", label, job.msg);
        return -1;
    }
    return finish_decoded(img, job.pixels, job.width, job.height, job.orientation, label, err);
}

/* ------------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr pub;      /* first: libjpeg hands us this pointer */
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jump, 1);
}

/* Warnings are silent, except running out of data: libjpeg would pad the
 * picture with grey where Pillow reports a truncated file. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(e->msg, sizeof e->msg, "file is truncated");
        longjmp(e->jump, 1);
    }
    if (level < 0) cinfo->err->num_warnings++;
}

static void jpeg_silent(j_common_ptr cinfo) { (void)cinfo; }

typedef struct {
    struct jpeg_decompress_struct cinfo;
    jpeg_err jerr;
    const char *label;
    char *err;
    int too_big;
    uint8_t *pixels;
    int width, height, orientation;
} jpeg_job;

static int jpeg_orientation(j_decompress_ptr cinfo) {
    for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
            return exif_orientation(m->data + 6, m->data_length - 6);
    }
    return 1;
}

/* Adobe CMYK JPEGs store inverted ink; Pillow undoes that and then converts
 * with R = (255 - C)(255 - K) / 255. */
static void cmyk_to_rgb(uint8_t *px, size_t n, int inverted) {
    for (size_t i = 0; i < n; i++) {
        unsigned c = px[i * 4], m = px[i * 4 + 1], y = px[i * 4 + 2], k = px[i * 4 + 3];
        if (inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
        px[i * 3 + 0] = div255((255 - c) * (255 - k));
        px[i * 3 + 1] = div255((255 - m) * (255 - k));
        px[i * 3 + 2] = div255((255 - y) * (255 - k));
    }
}

static int jpeg_decode_into(jpeg_job *job, const uint8_t *data, size_t size) {
    struct jpeg_decompress_struct *cinfo = &job->cinfo;
    if (setjmp(job->jerr.jump)) return -1;
    jpeg_create_decompress(cinfo);
    jpeg_mem_src(cinfo, data, (unsigned long)size);
    jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(cinfo, TRUE);
    if (check_size(cinfo->image_width, cinfo->image_height, job->label, job->err) != 0) {
        job->too_big = 1;
        return -1;
    }
    job->orientation = jpeg_orientation(cinfo);
    int cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(cinfo);

    int ch = cinfo->output_components;
    if (ch != (cmyk ? 4 : 3)) {
        snprintf(job->jerr.msg, sizeof job->jerr.msg, "unsupported colour layout");
        return -1;
    }
    size_t w = cinfo->output_width, h = cinfo->output_height, stride = w * ch;
    job->pixels = malloc(stride * h);
    if (!job->pixels) {
        snprintf(job->jerr.msg, sizeof job->jerr.msg, "out of memory");
        return -1;
    }
    while (cinfo->output_scanline < cinfo->output_height) {
        JSAMPROW row = job->pixels + stride * cinfo->output_scanline;
        if (jpeg_read_scanlines(cinfo, &row, 1) != 1) {
            snprintf(job->jerr.msg, sizeof job->jerr.msg, "file is truncated");
            return -1;
        }
    }
    if (cmyk) cmyk_to_rgb(job->pixels, w * h, cinfo->saw_Adobe_marker);
    job->width = (int)w;
    job->height = (int)h;
    return 0;
}

/* JPEG has no alpha channel, so no qvl_alpha here. */
static int decode_jpeg(const uint8_t *data, size_t size, const char *label, qvl_image *img, char *err) {
    jpeg_job job = { .label = label, .err = err, .orientation = 1 };
    job.cinfo.err = jpeg_std_error(&job.jerr.pub);
    job.jerr.pub.error_exit = jpeg_on_error;
    job.jerr.pub.emit_message = jpeg_on_message;
    job.jerr.pub.output_message = jpeg_silent;
    int rc = jpeg_decode_into(&job, data, size);
    jpeg_destroy_decompress(&job.cinfo);
    if (rc != 0) {
        free(job.pixels);
        if (!job.too_big) qvl_seterr(err, "%s: invalid JPEG: %s", label, job.jerr.msg);
        return -1;
    }
    return finish_decoded(img, job.pixels, job.width, job.height, job.orientation, label, err);
}

/* -------------------------------------------------------- other formats */

static int decode_stb(const uint8_t *data, size_t size, const char *label, qvl_alpha alpha,
                      qvl_image *img, char *err) {
    if (size > INT_MAX) {
        qvl_seterr(err, "%s: file too large (%zu bytes)", label, size);
        return -1;
    }
    int w, h, ch;
    if (!stbi_info_from_memory(data, (int)size, &w, &h, &ch)) {
        qvl_seterr(err, "%s: not an image in a known format (PNG, JPEG, GIF, BMP, TGA, PNM, PSD, PIC)",
                   label);
        return -1;
    }
    if (check_size(w, h, label, err) != 0) return -1;
    uint8_t *px = stbi_load_from_memory(data, (int)size, &w, &h, &ch, 0);
    if (!px) {
        qvl_seterr(err, "%s: invalid image: %s", label, stbi_failure_reason());
        return -1;
    }
    if (ch < 1 || ch > 4 || check_size(w, h, label, err) != 0) {
        if (ch < 1 || ch > 4) qvl_seterr(err, "%s: unsupported %d-channel image", label, ch);
        stbi_image_free(px);
        return -1;
    }
    img->rgb = malloc((size_t)w * h * 3);
    if (!img->rgb) {
        stbi_image_free(px);
        qvl_seterr(err, "%s: out of memory decoding a %dx%d image", label, w, h);
        return -1;
    }
    pixels_to_rgb(px, (size_t)w * h, ch, alpha, img->rgb);
    stbi_image_free(px);
    img->width = w;
    img->height = h;
    return 0;
}

/* ------------------------------------------------------------- front door */

int image_load_mem(const void *data, size_t size, const char *label, qvl_alpha alpha,
                   qvl_image *img, char *err) {
    const uint8_t *p = data;
    memset(img, 0, sizeof *img);
    if (!label) label = "image";
    if (!data || size == 0) {
        qvl_seterr(err, "%s: empty file", label);
        return -1;
    }
    static const uint8_t png_sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
    if (size >= 8 && memcmp(p, png_sig, 8) == 0) return decode_png(p, size, label, alpha, img, err);
    if (size >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return decode_jpeg(p, size, label, img, err);
    return decode_stb(p, size, label, alpha, img, err);
}

int image_load_file(const char *path, qvl_alpha alpha, qvl_image *img, char *err) {
    memset(img, 0, sizeof *img);
    size_t len;
    char *buf = qvl_read_file(path, &len, err);
    if (!buf) return -1;
    int rc = image_load_mem(buf, len, path, alpha, img, err);
    free(buf);
    return rc;
}

void image_free(qvl_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}

/* ----------------------------------------------------------- data URLs */

int image_load_data_url(const char *url, qvl_alpha alpha, qvl_image *img, char *err) {
    memset(img, 0, sizeof *img);
    unsigned char *bytes;
    size_t n;
    char why[QVL_ERR_MAX];
    if (data_url_decode(url, &bytes, &n, why) != 0) {
        qvl_seterr(err, "data: URL: %s", why);
        return -1;
    }
    int rc = image_load_mem(bytes, n, "data: URL", alpha, img, err);
    free(bytes);
    return rc;
}

/* ----------------------------------------------------------- smart_resize */

/* Python's round() on a float: nearest integer, ties to even. */
static double round_half_even(double x) {
    double f = floor(x), d = x - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return fmod(f, 2.0) == 0 ? f : f + 1;
}

int image_smart_resize(int height, int width, int factor, long min_pixels, long max_pixels,
                       int *out_h, int *out_w, char *err) {
    if (height <= 0 || width <= 0 || factor <= 0 || max_pixels <= 0) {
        qvl_seterr(err, "smart_resize: invalid arguments (height %d, width %d, factor %d, max_pixels %ld)",
                   height, width, factor, max_pixels);
        return -1;
    }
    double hi = height > width ? height : width, lo = height > width ? width : height;
    if (hi / lo > QVL_IMAGE_MAX_RATIO) {
        qvl_seterr(err, "image is %dx%d: aspect ratio %.1f is above the %d the model accepts",
                   width, height, hi / lo, QVL_IMAGE_MAX_RATIO);
        return -1;
    }
    /* The same floating-point steps as transformers' smart_resize. */
    double f = factor;
    double h_bar = round_half_even(height / f) * f;
    double w_bar = round_half_even(width / f) * f;
    if (h_bar * w_bar > (double)max_pixels) {
        double beta = sqrt((double)height * width / (double)max_pixels);
        h_bar = fmax(f, floor(height / beta / f) * f);
        w_bar = fmax(f, floor(width / beta / f) * f);
    } else if (h_bar * w_bar < (double)min_pixels) {
        double beta = sqrt((double)min_pixels / ((double)height * width));
        h_bar = ceil(height * beta / f) * f;
        w_bar = ceil(width * beta / f) * f;
    }
    h_bar = fmax(h_bar, f);
    w_bar = fmax(w_bar, f);
    if (h_bar * w_bar > (double)QVL_IMAGE_MAX_PIXELS) {
        qvl_seterr(err, "smart_resize: %dx%d would become %.0fx%.0f, more than %ld pixels",
                   width, height, w_bar, h_bar, QVL_IMAGE_MAX_PIXELS);
        return -1;
    }
    *out_h = (int)h_bar;
    *out_w = (int)w_bar;
    return 0;
}

/* ----------------------------------------------------------------- resize */

/* Which input pixels, with which int16 weights, make each output pixel of one
 * axis (ATen's _compute_index_ranges_int16_weights for bicubic, antialias). */
typedef struct {
    int ksize;                /* weights stored per output pixel */
    int *start, *count;       /* first input pixel and number of taps */
    int16_t *w;               /* [out][ksize] */
    int precision;            /* w = round(weight * 2^precision) */
} taps;

/* Keys' cubic convolution kernel with a = -0.5 (Pillow's bicubic filter). */
static double cubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    return 0.0;
}

static void taps_free(taps *t) {
    free(t->start);
    free(t->count);
    free(t->w);
    memset(t, 0, sizeof *t);
}

static int taps_compute(int in, int out, taps *t, char *err) {
    double scale = (double)in / out;
    double support = scale >= 1.0 ? 2.0 * scale : 2.0;   /* widened when shrinking */
    double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    int ksize = (int)ceil(support) * 2 + 1;
    memset(t, 0, sizeof *t);
    t->ksize = ksize;
    t->start = malloc(sizeof(int) * out);
    t->count = malloc(sizeof(int) * out);
    t->w = malloc(sizeof(int16_t) * (size_t)out * ksize);
    double *wf = malloc(sizeof(double) * (size_t)out * ksize);
    if (!t->start || !t->count || !t->w || !wf) {
        free(wf);
        taps_free(t);
        qvl_seterr(err, "resize: out of memory for %d -> %d filter taps", in, out);
        return -1;
    }
    /* Float weights first, normalised per output pixel; the largest one sets
     * the fixed-point precision for the whole axis. */
    double wt_max = 0.0;
    for (int i = 0; i < out; i++) {
        double center = scale * (i + 0.5);
        long long lo = (long long)(center - support + 0.5);   /* truncation, as ATen */
        long long hi = (long long)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        long long n = hi - lo;
        if (n < 0) n = 0;
        if (n > ksize) n = ksize;
        double *w = wf + (size_t)i * ksize, total = 0.0;
        for (int j = 0; j < n; j++) {
            w[j] = cubic((j + lo - center + 0.5) * invscale);
            total += w[j];
        }
        for (int j = 0; j < n; j++) {
            if (total != 0.0) w[j] /= total;
            if (total != 0.0 && w[j] > wt_max) wt_max = w[j];
        }
        for (int j = (int)n; j < ksize; j++) w[j] = 0.0;
        t->start[i] = (int)lo;
        t->count[i] = (int)n;
    }
    int p = 0;
    for (p = 0; p < 22; p++)
        if ((int)(0.5 + wt_max * (1 << (p + 1))) >= (1 << 15)) break;
    t->precision = p;
    for (size_t k = 0; k < (size_t)out * ksize; k++) {
        double v = wf[k] * (1 << p);
        t->w[k] = (int16_t)(v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v));
    }
    free(wf);
    return 0;
}

/* The sum of taps in fixed point, rounded and clamped to a byte. */
static inline uint8_t fixed_to_u8(int acc, int precision) {
    if (acc < 0) return 0;
    acc >>= precision;
    return (uint8_t)(acc > 255 ? 255 : acc);
}

/* Resizes rows: src is sw x h, dst is dw x h. */
static void resize_horizontal(const uint8_t *src, int sw, int h, uint8_t *dst, int dw, const taps *t) {
    int half = 1 << (t->precision - 1);
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)y * sw * 3;
        uint8_t *out = dst + (size_t)y * dw * 3;
        for (int x = 0; x < dw; x++) {
            const int16_t *w = t->w + (size_t)x * t->ksize;
            const uint8_t *s = row + (size_t)t->start[x] * 3;
            int r = half, g = half, b = half;
            for (int j = 0; j < t->count[x]; j++) {
                r += s[j * 3 + 0] * w[j];
                g += s[j * 3 + 1] * w[j];
                b += s[j * 3 + 2] * w[j];
            }
            out[x * 3 + 0] = fixed_to_u8(r, t->precision);
            out[x * 3 + 1] = fixed_to_u8(g, t->precision);
            out[x * 3 + 2] = fixed_to_u8(b, t->precision);
        }
    }
}

/* Resizes columns: src is w x sh, dst is w x dh.  Whole rows are weighted
 * and summed a chunk at a time, so the inner loop runs along memory. */
static void resize_vertical(const uint8_t *src, int w, uint8_t *dst, int dh, const taps *t) {
    enum { CHUNK = 1024 };
    int half = 1 << (t->precision - 1);
    size_t stride = (size_t)w * 3;
    for (int y = 0; y < dh; y++) {
        const int16_t *wt = t->w + (size_t)y * t->ksize;
        const uint8_t *s = src + (size_t)t->start[y] * stride;
        uint8_t *out = dst + (size_t)y * stride;
        for (size_t i0 = 0; i0 < stride; i0 += CHUNK) {
            int acc[CHUNK];
            size_t n = stride - i0 < CHUNK ? stride - i0 : CHUNK;
            for (size_t i = 0; i < n; i++) acc[i] = half;
            for (int j = 0; j < t->count[y]; j++) {
                const uint8_t *row = s + (size_t)j * stride + i0;
                int wj = wt[j];
                for (size_t i = 0; i < n; i++) acc[i] += row[i] * wj;
            }
            for (size_t i = 0; i < n; i++) out[i0 + i] = fixed_to_u8(acc[i], t->precision);
        }
    }
}

int image_resize(const qvl_image *src, int out_w, int out_h, qvl_image *dst, char *err) {
    memset(dst, 0, sizeof *dst);
    if (!src->rgb || src->width <= 0 || src->height <= 0 || out_w <= 0 || out_h <= 0 ||
        (long long)out_w * out_h > QVL_IMAGE_MAX_PIXELS) {
        qvl_seterr(err, "resize: cannot resize %dx%d to %dx%d", src->width, src->height, out_w, out_h);
        return -1;
    }
    int sw = src->width, sh = src->height;
    dst->rgb = malloc((size_t)out_w * out_h * 3);
    if (!dst->rgb) {
        qvl_seterr(err, "resize: out of memory for a %dx%d image", out_w, out_h);
        return -1;
    }
    dst->width = out_w;
    dst->height = out_h;
    if (sw == out_w && sh == out_h) {
        memcpy(dst->rgb, src->rgb, (size_t)sw * sh * 3);
        return 0;
    }
    /* Horizontal first, as ATen does; an axis whose size is unchanged is
     * skipped, not filtered. */
    const uint8_t *cur = src->rgb;
    uint8_t *tmp = NULL;
    taps t;
    if (sw != out_w) {
        uint8_t *to = dst->rgb;
        if (sh != out_h) {
            tmp = malloc((size_t)out_w * sh * 3);
            if (!tmp) goto oom;
            to = tmp;
        }
        if (taps_compute(sw, out_w, &t, err) != 0) goto fail;
        resize_horizontal(cur, sw, sh, to, out_w, &t);
        taps_free(&t);
        cur = to;
    }
    if (sh != out_h) {
        if (taps_compute(sh, out_h, &t, err) != 0) goto fail;
        resize_vertical(cur, out_w, dst->rgb, out_h, &t);
        taps_free(&t);
    }
    free(tmp);
    return 0;
oom:
    qvl_seterr(err, "resize: out of memory resizing %dx%d to %dx%d", sw, sh, out_w, out_h);
fail:
    free(tmp);
    image_free(dst);
    return -1;
}

/* ------------------------------------------------------------- patches */

static int preproc_check(const qvl_preproc *p, char *err) {
    if (p->patch <= 0 || p->patch > 1024 || p->merge <= 0 || p->merge > 64 ||
        p->temporal_patch <= 0 || p->temporal_patch > 64) {
        qvl_seterr(err, "preprocessor settings: invalid patch_size %d, merge_size %d or temporal_patch_size %d",
                   p->patch, p->merge, p->temporal_patch);
        return -1;
    }
    if (!(p->rescale > 0) || p->max_pixels <= 0 || p->min_pixels < 0) {
        qvl_seterr(err, "preprocessor settings: invalid rescale_factor %g or pixel limits %ld..%ld",
                   p->rescale, p->min_pixels, p->max_pixels);
        return -1;
    }
    for (int c = 0; c < 3; c++) {
        if (!(p->std[c] != 0) || !isfinite(p->std[c]) || !isfinite(p->mean[c])) {
            qvl_seterr(err, "preprocessor settings: invalid image_mean/image_std for channel %d", c);
            return -1;
        }
    }
    return 0;
}

void pixels_free(qvl_pixels *px) {
    if (!px) return;
    free(px->pixels);
    image_free(&px->resized);
    memset(px, 0, sizeof *px);
}

int image_preprocess(const qvl_image *img, const qvl_preproc *p, qvl_pixels *out, char *err) {
    memset(out, 0, sizeof *out);
    if (preproc_check(p, err) != 0) return -1;
    int P = p->patch, M = p->merge, T = p->temporal_patch;
    int rh, rw;
    if (image_smart_resize(img->height, img->width, P * M, p->min_pixels, p->max_pixels, &rh, &rw, err) != 0)
        return -1;
    if (image_resize(img, rw, rh, &out->resized, err) != 0) return -1;

    out->grid_t = 1;
    out->grid_h = rh / P;
    out->grid_w = rw / P;
    out->n_patches = out->grid_h * out->grid_w;
    out->patch_dim = 3 * T * P * P;
    out->pixels = malloc(sizeof(float) * (size_t)out->n_patches * out->patch_dim);
    if (!out->pixels) {
        qvl_seterr(err, "preprocess: out of memory for %d patches", out->n_patches);
        pixels_free(out);
        return -1;
    }
    /* The fused rescale + normalize of transformers: (x - mean/r) / (std/r)
     * in float32, tabulated per byte value. */
    float lut[3][256];
    for (int c = 0; c < 3; c++) {
        float m = (float)(p->mean[c] / p->rescale), s = (float)(p->std[c] / p->rescale);
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v - m) / s;
    }
    const uint8_t *rgb = out->resized.rgb;
    float *dst = out->pixels;
    for (int bh = 0; bh < out->grid_h / M; bh++)
    for (int bw = 0; bw < out->grid_w / M; bw++)
    for (int mh = 0; mh < M; mh++)
    for (int mw = 0; mw < M; mw++) {
        int y0 = (bh * M + mh) * P, x0 = (bw * M + mw) * P;
        for (int c = 0; c < 3; c++)
        for (int t = 0; t < T; t++)          /* the one frame, repeated */
        for (int py = 0; py < P; py++) {
            const uint8_t *row = rgb + ((size_t)(y0 + py) * rw + x0) * 3 + c;
            for (int px = 0; px < P; px++) *dst++ = lut[c][row[px * 3]];
        }
    }
    return 0;
}
