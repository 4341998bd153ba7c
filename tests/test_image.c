/* test_image.c - decoding and Qwen-VL preprocessing against the transformers
 * goldens (tests/data/goldens/preprocess.safetensors and goldens.json), plus
 * the parts the goldens cannot show: alpha compositing, EXIF orientation, the
 * stb_image formats, base64 and data: URLs, and refusing bad input.
 *
 * Small pictures in other formats are built here byte by byte (or with
 * libjpeg), so their expected pixels are known without any decoder. */
#include "testutil.h"
#include "image.h"
#include "common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <png.h>
#include <jpeglib.h>

/* ------------------------------------------------------------ fixtures */

static cJSON *goldens;            /* goldens.json */
static char *st_data;             /* preprocess.safetensors */
static size_t st_size;
static cJSON *st_header;

static void load_goldens(void) {
    char *text = slurp(data_path("goldens/goldens.json"), NULL);
    goldens = cJSON_Parse(text);
    free(text);
    st_data = slurp(data_path("goldens/preprocess.safetensors"), &st_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (unsigned char)st_data[i];
    if (n + 8 <= st_size) st_header = cJSON_ParseWithLength(st_data + 8, (size_t)n);
}

static void free_goldens(void) {
    cJSON_Delete(goldens);
    cJSON_Delete(st_header);
    free(st_data);
    goldens = st_header = NULL;
    st_data = NULL;
}

/* A float16 golden tensor as floats (malloc'd), or NULL when absent. */
static float *golden_tensor(const char *name, int64_t *rows, int64_t *cols) {
    ck_assert_msg(st_header != NULL, "preprocess.safetensors header did not parse");
    cJSON *t = cJSON_GetObjectItemCaseSensitive(st_header, name);
    if (!t) return NULL;
    const char *dtype = cJSON_GetObjectItem(t, "dtype")->valuestring;
    cJSON *shape = cJSON_GetObjectItem(t, "shape"), *off = cJSON_GetObjectItem(t, "data_offsets");
    ck_assert_str_eq(dtype, "F16");
    ck_assert_int_eq(cJSON_GetArraySize(shape), 2);
    *rows = (int64_t)cJSON_GetArrayItem(shape, 0)->valuedouble;
    *cols = (int64_t)cJSON_GetArrayItem(shape, 1)->valuedouble;
    size_t start = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
    size_t end = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
    uint64_t hdr = 0;
    for (int i = 7; i >= 0; i--) hdr = hdr << 8 | (unsigned char)st_data[i];
    size_t base = 8 + (size_t)hdr, n = (size_t)(*rows * *cols);
    ck_assert(end - start == n * 2 && base + end <= st_size);
    float *out = malloc(n * sizeof(float));
    const unsigned char *p = (const unsigned char *)st_data + base + start;
    for (size_t i = 0; i < n; i++) out[i] = qvl_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    return out;
}

/* The processor settings the goldens were made with. */
static qvl_preproc golden_preproc(const cJSON *section) {
    const cJSON *c = cJSON_GetObjectItem(section, "preprocessor_config");
    const cJSON *size = cJSON_GetObjectItem(c, "size");
    qvl_preproc p;
    memset(&p, 0, sizeof p);
    p.min_pixels = (long)cJSON_GetObjectItem(size, "shortest_edge")->valuedouble;
    p.max_pixels = (long)cJSON_GetObjectItem(size, "longest_edge")->valuedouble;
    p.patch = cJSON_GetObjectItem(c, "patch_size")->valueint;
    p.temporal_patch = cJSON_GetObjectItem(c, "temporal_patch_size")->valueint;
    p.merge = cJSON_GetObjectItem(c, "merge_size")->valueint;
    for (int i = 0; i < 3; i++) {
        p.mean[i] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "image_mean"), i)->valuedouble;
        p.std[i] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(c, "image_std"), i)->valuedouble;
    }
    p.rescale = cJSON_GetObjectItem(c, "rescale_factor")->valuedouble;
    return p;
}

static const char *images[] = {
    "a_80x60.png", "b_50x130_rgba.png", "c_33x47_gray.png", "d_300x200.jpg", "e_320x224.png",
    "f_64x64_palette.png", "g_1200x900.jpg", "h_97x41.png", "i_150x150.jpg", "j_3000x40.png",
};
#define N_IMAGES 10

/* One golden case: settings "real" or "tiny", image number i. */
static void check_golden(const char *setting, int i) {
    char key[64], err[QVL_ERR_MAX];
    snprintf(key, sizeof key, "preprocess_%s", setting);
    const cJSON *section = cJSON_GetObjectItem(goldens, key);
    ck_assert(section != NULL);
    const cJSON *meta = cJSON_GetObjectItem(cJSON_GetObjectItem(section, "images"), images[i]);
    ck_assert_msg(meta != NULL, "no golden for %s", images[i]);
    qvl_preproc p = golden_preproc(section);

    char rel[128];
    snprintf(rel, sizeof rel, "images/%s", images[i]);
    qvl_image img;
    /* The goldens hand PIL images straight to the processor: RGBA loses its alpha. */
    ck_assert_msg(image_load_file(data_path(rel), QVL_ALPHA_DROP, &img, err) == 0, "%s", err);
    const cJSON *size = cJSON_GetObjectItem(meta, "size");
    ck_assert_int_eq(img.width, cJSON_GetArrayItem(size, 0)->valueint);
    ck_assert_int_eq(img.height, cJSON_GetArrayItem(size, 1)->valueint);

    qvl_pixels px;
    ck_assert_msg(image_preprocess(&img, &p, &px, err) == 0, "%s", err);
    const cJSON *grid = cJSON_GetObjectItem(meta, "grid_thw");
    ck_assert_int_eq(px.grid_t, cJSON_GetArrayItem(grid, 0)->valueint);
    ck_assert_int_eq(px.grid_h, cJSON_GetArrayItem(grid, 1)->valueint);
    ck_assert_int_eq(px.grid_w, cJSON_GetArrayItem(grid, 2)->valueint);
    const cJSON *shape = cJSON_GetObjectItem(meta, "shape");
    ck_assert_int_eq(px.n_patches, cJSON_GetArrayItem(shape, 0)->valueint);
    ck_assert_int_eq(px.patch_dim, cJSON_GetArrayItem(shape, 1)->valueint);
    ck_assert_int_eq(px.resized.width, px.grid_w * p.patch);
    ck_assert_int_eq(px.resized.height, px.grid_h * p.patch);

    size_t n = (size_t)px.n_patches * px.patch_dim;
    double sum = 0, sq = 0;
    for (size_t k = 0; k < n; k++) { sum += px.pixels[k]; sq += (double)px.pixels[k] * px.pixels[k]; }
    double mean = sum / n, std = sqrt((sq - sum * sum / n) / (n - 1));
    double gmean = cJSON_GetObjectItem(meta, "mean")->valuedouble;
    double gstd = cJSON_GetObjectItem(meta, "std")->valuedouble;
    int is_jpeg = strstr(images[i], ".jpg") != NULL;
    double stat_tol = is_jpeg ? 5e-3 : 1e-3;
    ck_assert_msg(fabs(mean - gmean) < stat_tol && fabs(std - gstd) < stat_tol,
                  "%s %s: mean %.6f std %.6f, golden %.6f %.6f", setting, images[i], mean, std, gmean, gstd);

    char name[128];
    snprintf(name, sizeof name, "%s.%s.pixel_values", setting, images[i]);
    int64_t rows, cols;
    float *gold = golden_tensor(name, &rows, &cols);
    if (gold) {
        ck_assert_int_eq(rows, px.n_patches);
        ck_assert_int_eq(cols, px.patch_dim);
        double max_err = 0, sum_err = 0;
        for (size_t k = 0; k < n; k++) {
            double e = fabs((double)px.pixels[k] - gold[k]);
            sum_err += e;
            if (e > max_err) max_err = e;
        }
        double mean_err = sum_err / n;
        printf("  %s %-20s grid %dx%dx%d  max abs err %.5f  mean abs err %.6f\n", setting, images[i],
               px.grid_t, px.grid_h, px.grid_w, max_err, mean_err);
        /* The goldens are float16: half an ulp near 1 is 0.00024, while one
         * byte off after the resize is 2/255 = 0.0078.  PNG decoding is
         * lossless, so the bytes must match exactly.  JPEG pixels depend on
         * the libjpeg-turbo build; Pillow's and Debian's agree exactly, the
         * bound leaves room for a different IDCT while still catching a
         * wrong filter (a = -0.75 already gives a mean error of 0.003). */
        double max_tol = is_jpeg ? 0.02 : 0.001, mean_tol = is_jpeg ? 0.0005 : 0.0002;
        ck_assert_msg(max_err <= max_tol && mean_err <= mean_tol, "%s %s: max abs err %.5f, mean %.6f",
                      setting, images[i], max_err, mean_err);
        free(gold);
    } else {
        ck_assert_msg(strcmp(images[i], "g_1200x900.jpg") == 0, "golden tensor %s missing", name);
    }
    pixels_free(&px);
    image_free(&img);
}

START_TEST(golden_real) { check_golden("real", _i); }
END_TEST

START_TEST(golden_tiny) { check_golden("tiny", _i); }
END_TEST

/* --------------------------------------------------------- smart_resize */

static void expect_size(int h, int w, int factor, long lo, long hi, int eh, int ew) {
    char err[QVL_ERR_MAX];
    int rh = -1, rw = -1;
    ck_assert_msg(image_smart_resize(h, w, factor, lo, hi, &rh, &rw, err) == 0, "%s", err);
    ck_assert_msg(rh == eh && rw == ew, "smart_resize(%d, %d) = %dx%d, expected %dx%d", h, w, rh, rw, eh, ew);
}

START_TEST(smart_resize_rules) {
    /* Ties go to even, as Python's round: 48/32 = 1.5 -> 2, 80/32 = 2.5 -> 2,
     * 112/32 = 3.5 -> 4, 144/32 = 4.5 -> 4. */
    expect_size(48, 80, 32, 0, 1L << 30, 64, 64);
    expect_size(112, 144, 32, 0, 1L << 30, 128, 128);
    /* Below min_pixels: 60x80 rounds to 64x64 = 4096 < 65536, beta = sqrt(65536/4800)
     * = 3.695; ceil(60 * 3.695 / 32) = 7, ceil(80 * 3.695 / 32) = 10. */
    expect_size(60, 80, 32, 65536, 16777216, 224, 320);
    /* Above max_pixels: 900x1200 rounds to 896x1216 > 16384; beta = sqrt(1080000/16384)
     * = 8.119; floor(900 / 8.119 / 32) = 3, floor(1200 / 8.119 / 32) = 4. */
    expect_size(900, 1200, 32, 4096, 16384, 96, 128);
    /* Never below one factor per side: 40 / 17.68 / 32 floors to 0. */
    expect_size(40, 8000, 32, 0, 1024, 32, 448);
    /* An aspect ratio of exactly 200 is accepted; 2000/32 = 62.5 -> 62, and
     * 10/32 rounds to 0, raised to one factor. */
    expect_size(10, 2000, 32, 0, 1L << 30, 32, 1984);

    char err[QVL_ERR_MAX] = "";
    int rh, rw;
    ck_assert_int_eq(image_smart_resize(10, 2001, 32, 0, 1L << 30, &rh, &rw, err), -1);
    ck_assert_msg(strstr(err, "aspect ratio") != NULL, "%s", err);
    ck_assert_int_eq(image_smart_resize(0, 10, 32, 0, 1000, &rh, &rw, err), -1);
}
END_TEST

/* ------------------------------------------------------------- decoding */

/* An independent read of a PNG as RGBA through libpng's simplified API. */
static unsigned char *png_rgba(const char *path, int *w, int *h) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    ck_assert(png_image_begin_read_from_file(&pi, path));
    pi.format = PNG_FORMAT_RGBA;
    unsigned char *buf = malloc(PNG_IMAGE_SIZE(pi));
    ck_assert(png_image_finish_read(&pi, NULL, buf, 0, NULL));
    *w = (int)pi.width;
    *h = (int)pi.height;
    return buf;
}

START_TEST(alpha_white_and_drop) {
    const char *path = data_path("images/b_50x130_rgba.png");
    char err[QVL_ERR_MAX];
    qvl_image white, drop;
    ck_assert_msg(image_load_file(path, QVL_ALPHA_WHITE, &white, err) == 0, "%s", err);
    ck_assert_msg(image_load_file(path, QVL_ALPHA_DROP, &drop, err) == 0, "%s", err);
    int w, h;
    unsigned char *rgba = png_rgba(path, &w, &h);
    ck_assert_int_eq(w, white.width);
    ck_assert_int_eq(h, white.height);
    int transparent = 0, opaque = 0, partial = 0;
    for (int i = 0; i < w * h; i++) {
        unsigned a = rgba[i * 4 + 3];
        for (int c = 0; c < 3; c++) {
            unsigned v = rgba[i * 4 + c];
            ck_assert_int_eq(drop.rgb[i * 3 + c], v);   /* dropping keeps the stored colour */
            double want = (v * a + 255.0 * (255 - a)) / 255.0;
            ck_assert_msg(fabs(white.rgb[i * 3 + c] - want) <= 0.5 + 1e-9,
                          "pixel %d channel %d alpha %u: %d, expected %.2f", i, c, a, white.rgb[i * 3 + c], want);
            if (a == 0) ck_assert_int_eq(white.rgb[i * 3 + c], 255);
        }
        transparent += a == 0;
        opaque += a == 255;
        partial += a > 0 && a < 255;
    }
    /* The picture must exercise all three cases for this test to mean anything. */
    ck_assert_msg(transparent > 0 && opaque > 0 && partial > 0, "alpha: %d transparent, %d opaque, %d partial",
                  transparent, opaque, partial);
    free(rgba);
    image_free(&white);
    image_free(&drop);
}
END_TEST

/* Grey and palette PNGs expand to the RGB libpng's own converter gives. */
START_TEST(grey_and_palette_to_rgb) {
    const char *names[] = { "images/c_33x47_gray.png", "images/f_64x64_palette.png", "images/a_80x60.png" };
    for (int k = 0; k < 3; k++) {
        char err[QVL_ERR_MAX];
        qvl_image img;
        ck_assert_msg(image_load_file(data_path(names[k]), QVL_ALPHA_WHITE, &img, err) == 0, "%s", err);
        int w, h;
        unsigned char *rgba = png_rgba(data_path(names[k]), &w, &h);
        ck_assert(w == img.width && h == img.height);
        for (int i = 0; i < w * h; i++) {
            ck_assert_int_eq(rgba[i * 4 + 3], 255);
            for (int c = 0; c < 3; c++) ck_assert_int_eq(img.rgb[i * 3 + c], rgba[i * 4 + c]);
            if (k == 0) ck_assert(img.rgb[i * 3] == img.rgb[i * 3 + 1] && img.rgb[i * 3] == img.rgb[i * 3 + 2]);
        }
        free(rgba);
        image_free(&img);
    }
}
END_TEST

/* A 32x16 JPEG in four flat quadrants (red, green / blue, white), with an EXIF
 * Orientation tag when orientation > 0, in big- or little-endian TIFF. */
static unsigned char *quadrant_jpeg(int orientation, int little_endian, unsigned long *size) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    jpeg_mem_dest(&c, &out, size);
    c.image_width = 32;
    c.image_height = 16;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    c.comp_info[0].h_samp_factor = c.comp_info[0].v_samp_factor = 1;
    jpeg_start_compress(&c, TRUE);
    if (orientation > 0) {
        unsigned char exif[6 + 8 + 2 + 12 + 4] = "Exif\0\0";
        unsigned char *t = exif + 6;
        if (little_endian) {
            memcpy(t, "II\x2a\0\x08\0\0\0", 8);
            memcpy(t + 8, "\x01\0", 2);
            memcpy(t + 10, "\x12\x01\x03\0\x01\0\0\0", 8);
            t[18] = (unsigned char)orientation;
        } else {
            memcpy(t, "MM\0\x2a\0\0\0\x08", 8);
            memcpy(t + 8, "\0\x01", 2);
            memcpy(t + 10, "\x01\x12\0\x03\0\0\0\x01", 8);
            t[19] = (unsigned char)orientation;
        }
        jpeg_write_marker(&c, JPEG_APP0 + 1, exif, sizeof exif);
    }
    unsigned char row[32 * 3];
    for (int y = 0; y < 16; y++) {
        for (int x = 0; x < 32; x++) {
            static const unsigned char colours[4][3] = { {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255} };
            memcpy(row + x * 3, colours[(y >= 8) * 2 + (x >= 16)], 3);
        }
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return out;
}

/* Colour of the quadrant around (x, y): 'R', 'G', 'B', 'W' or '?'. */
static char colour_at(const qvl_image *img, int x, int y) {
    const unsigned char *p = img->rgb + ((size_t)y * img->width + x) * 3;
    int hi[3];
    for (int c = 0; c < 3; c++) {
        if (p[c] > 200) hi[c] = 1;
        else if (p[c] < 55) hi[c] = 0;
        else return '?';
    }
    if (hi[0] && hi[1] && hi[2]) return 'W';
    if (hi[0] && !hi[1] && !hi[2]) return 'R';
    if (!hi[0] && hi[1] && !hi[2]) return 'G';
    if (!hi[0] && !hi[1] && hi[2]) return 'B';
    return '?';
}

START_TEST(exif_orientation) {
    /* Stored: R G / B W.  What Pillow's exif_transpose shows for each tag
     * (top-left, top-right, bottom-left, bottom-right):
     * 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
     * 7 transverse, 8 rotate 90 counter-clockwise. */
    static const char *want[9] = { "RGBW", "RGBW", "GRWB", "WBGR", "BWRG", "RBGW", "BRWG", "WGBR", "GWRB" };
    for (int o = 0; o <= 8; o++) {
        for (int le = 0; le < 2; le++) {
            unsigned long size;
            unsigned char *jpg = quadrant_jpeg(o, le, &size);
            char err[QVL_ERR_MAX];
            qvl_image img;
            ck_assert_msg(image_load_mem(jpg, size, "quadrants.jpg", QVL_ALPHA_WHITE, &img, err) == 0, "%s", err);
            int rotated = o >= 5;
            ck_assert_int_eq(img.width, rotated ? 16 : 32);
            ck_assert_int_eq(img.height, rotated ? 32 : 16);
            int qw = img.width / 2, qh = img.height / 2;
            char got[5] = {
                colour_at(&img, qw / 2, qh / 2), colour_at(&img, qw + qw / 2, qh / 2),
                colour_at(&img, qw / 2, qh + qh / 2), colour_at(&img, qw + qw / 2, qh + qh / 2), 0 };
            ck_assert_msg(strcmp(got, want[o]) == 0, "orientation %d (%s): %s, expected %s", o,
                          le ? "II" : "MM", got, want[o]);
            image_free(&img);
            free(jpg);
        }
    }
}
END_TEST

/* ------------------------------------------------------ built PNGs */

static uint32_t crc32_of(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

static size_t png_chunk(unsigned char *out, const char *type, const unsigned char *data, uint32_t n) {
    out[0] = (unsigned char)(n >> 24); out[1] = (unsigned char)(n >> 16);
    out[2] = (unsigned char)(n >> 8); out[3] = (unsigned char)n;
    memcpy(out + 4, type, 4);
    if (n) memcpy(out + 8, data, n);
    uint32_t c = crc32_of(out + 4, n + 4);
    out[8 + n] = (unsigned char)(c >> 24); out[9 + n] = (unsigned char)(c >> 16);
    out[10 + n] = (unsigned char)(c >> 8); out[11 + n] = (unsigned char)c;
    return 12 + n;
}

/* ------------------------------------------------- stb_image formats */

static const unsigned char px6[6][3] = {
    {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}, {200, 100, 50}, {255, 255, 255} };

static void expect_px6(const qvl_image *img, const char *what) {
    ck_assert_msg(img->width == 3 && img->height == 2, "%s: %dx%d", what, img->width, img->height);
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++)
            ck_assert_msg(img->rgb[i * 3 + c] == px6[i][c], "%s: pixel %d channel %d is %d, expected %d",
                          what, i, c, img->rgb[i * 3 + c], px6[i][c]);
}

static void load_ok(const unsigned char *data, size_t n, const char *what, qvl_alpha alpha, qvl_image *img) {
    char err[QVL_ERR_MAX];
    ck_assert_msg(image_load_mem(data, n, what, alpha, img, err) == 0, "%s", err);
}

START_TEST(pnm_bmp_tga) {
    qvl_image img;
    /* PPM (P6), 3x2. */
    unsigned char ppm[64];
    int n = snprintf((char *)ppm, sizeof ppm, "P6\n3 2\n255\n");
    memcpy(ppm + n, px6, 18);
    load_ok(ppm, (size_t)n + 18, "ppm", QVL_ALPHA_WHITE, &img);
    expect_px6(&img, "ppm");
    image_free(&img);

    /* BMP, 24-bit, bottom-up rows of BGR padded to 4 bytes. */
    unsigned char bmp[54 + 2 * 12];
    memset(bmp, 0, sizeof bmp);
    memcpy(bmp, "BM", 2);
    bmp[2] = sizeof bmp; bmp[10] = 54; bmp[14] = 40; bmp[18] = 3; bmp[22] = 2; bmp[26] = 1; bmp[28] = 24;
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 3; x++)
            for (int c = 0; c < 3; c++) bmp[54 + (1 - y) * 12 + x * 3 + c] = px6[y * 3 + x][2 - c];
    load_ok(bmp, sizeof bmp, "bmp", QVL_ALPHA_WHITE, &img);
    expect_px6(&img, "bmp");
    image_free(&img);

    /* TGA, 32-bit BGRA, top-left origin; pixel 3 fully transparent. */
    unsigned char tga[18 + 6 * 4];
    memset(tga, 0, sizeof tga);
    tga[2] = 2; tga[12] = 3; tga[14] = 2; tga[16] = 32; tga[17] = 0x28;
    for (int i = 0; i < 6; i++) {
        for (int c = 0; c < 3; c++) tga[18 + i * 4 + c] = px6[i][2 - c];
        tga[18 + i * 4 + 3] = i == 3 ? 0 : 255;
    }
    load_ok(tga, sizeof tga, "tga", QVL_ALPHA_DROP, &img);
    expect_px6(&img, "tga (alpha dropped)");
    image_free(&img);
    load_ok(tga, sizeof tga, "tga", QVL_ALPHA_WHITE, &img);
    for (int c = 0; c < 3; c++) ck_assert_int_eq(img.rgb[3 * 3 + c], 255);
    ck_assert_int_eq(img.rgb[0], 255);
    ck_assert_int_eq(img.rgb[1], 0);
    image_free(&img);
}
END_TEST

/* The 3x2 px6 picture as a PNG: IHDR, optional eXIf (big-endian TIFF with
 * one Orientation entry), one stored (uncompressed) zlib block, IEND. */
static size_t px6_png(unsigned char *out, int orientation) {
    size_t k = 0;
    memcpy(out, "\x89PNG\r\n\x1a\n", 8); k = 8;
    unsigned char ihdr[13] = { 0, 0, 0, 3, 0, 0, 0, 2, 8, 2, 0, 0, 0 };
    k += png_chunk(out + k, "IHDR", ihdr, 13);
    if (orientation) {
        unsigned char exif[26] = { 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1,
                                   0, (unsigned char)orientation, 0, 0, 0, 0, 0, 0 };
        k += png_chunk(out + k, "eXIf", exif, sizeof exif);
    }
    unsigned char z[2 + 5 + 20 + 4] = { 0x78, 0x01, 0x01, 20, 0, (unsigned char)~20, 0xff };
    for (int y = 0; y < 2; y++) {
        z[7 + y * 10] = 0;                                    /* filter: none */
        memcpy(z + 8 + y * 10, px6[y * 3], 9);
    }
    uint32_t a = 1, b = 0;                                    /* Adler-32 of the raw rows */
    for (int i = 0; i < 20; i++) { a = (a + z[7 + i]) % 65521; b = (b + a) % 65521; }
    uint32_t adler = b << 16 | a;
    for (int i = 0; i < 4; i++) z[27 + i] = (unsigned char)(adler >> (24 - 8 * i));
    k += png_chunk(out + k, "IDAT", z, sizeof z);
    k += png_chunk(out + k, "IEND", NULL, 0);
    return k;
}

START_TEST(png_built_and_exif) {
    unsigned char png[256];
    qvl_image img;
    load_ok(png, px6_png(png, 0), "px6.png", QVL_ALPHA_WHITE, &img);
    expect_px6(&img, "png");
    image_free(&img);
    /* Orientation 8 (rotate 90 counter-clockwise): the right column becomes
     * the top row.  p0 p1 p2 / p3 p4 p5 shows as p2 p5 / p1 p4 / p0 p3. */
    load_ok(png, px6_png(png, 8), "px6-rot.png", QVL_ALPHA_WHITE, &img);
    ck_assert(img.width == 2 && img.height == 3);
    static const int want[6] = { 2, 5, 1, 4, 0, 3 };
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(img.rgb[i * 3 + c], px6[want[i]][c]);
    image_free(&img);
}
END_TEST

/* GIF image data: each pixel a literal LZW code of 3 bits (minimum code size
 * 2), a clear code before every pair so the code width never grows. */
static size_t gif_frame(unsigned char *out, const unsigned char *idx, int n) {
    unsigned char packed[64];
    int nbits = 0;
    memset(packed, 0, sizeof packed);
    #define PUT(code) do { for (int b = 0; b < 3; b++, nbits++) \
        if ((code) >> b & 1) packed[nbits / 8] |= (unsigned char)(1 << (nbits % 8)); } while (0)
    for (int i = 0; i < n; i++) {
        if (i % 2 == 0) PUT(4);
        PUT(idx[i]);
    }
    PUT(5);
    #undef PUT
    size_t k = 0, bytes = (size_t)(nbits + 7) / 8;
    out[k++] = 0x2c;                                  /* image descriptor, 3x2 at 0,0 */
    memcpy(out + k, "\0\0\0\0\x03\0\x02\0\0", 9); k += 9;
    out[k++] = 2;                                     /* LZW minimum code size */
    out[k++] = (unsigned char)bytes;
    memcpy(out + k, packed, bytes); k += bytes;
    out[k++] = 0;
    return k;
}

START_TEST(gif_first_frame) {
    unsigned char gif[256];
    size_t k = 0;
    memcpy(gif, "GIF89a\x03\0\x02\0\x81\0\0", 13); k = 13;   /* 4-colour global table */
    static const unsigned char table[4][3] = { {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255} };
    memcpy(gif + k, table, 12); k += 12;
    static const unsigned char first[6] = { 0, 1, 2, 3, 2, 1 }, second[6] = { 3, 3, 3, 3, 3, 3 };
    k += gif_frame(gif + k, first, 6);
    k += gif_frame(gif + k, second, 6);
    gif[k++] = 0x3b;
    qvl_image img;
    load_ok(gif, k, "gif", QVL_ALPHA_WHITE, &img);
    ck_assert(img.width == 3 && img.height == 2);
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(img.rgb[i * 3 + c], table[first[i]][c]);
    image_free(&img);
}
END_TEST

/* --------------------------------------------------- base64, data: URL */

static char *base64_encode(const unsigned char *p, size_t n) {
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(n / 3 * 4 + 8), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = digits[v >> 18 & 63];
        *o++ = digits[v >> 12 & 63];
        *o++ = i + 1 < n ? digits[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? digits[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* (base64 itself is tested with data_url_decode in test_options.c) */
START_TEST(base64_and_data_url) {
    char err[QVL_ERR_MAX];
    size_t len;
    char *png = slurp(data_path("images/h_97x41.png"), &len);
    char *b64 = base64_encode((unsigned char *)png, len);
    char *url = malloc(strlen(b64) + 32);
    sprintf(url, "data:image/png;base64,%s", b64);
    qvl_image a, f;
    ck_assert_msg(image_load_data_url(url, QVL_ALPHA_WHITE, &a, err) == 0, "%s", err);
    ck_assert_msg(image_load_file(data_path("images/h_97x41.png"), QVL_ALPHA_WHITE, &f, err) == 0, "%s", err);
    ck_assert(a.width == f.width && a.height == f.height);
    ck_assert(memcmp(a.rgb, f.rgb, (size_t)a.width * a.height * 3) == 0);
    image_free(&a);
    image_free(&f);
    ck_assert_int_eq(image_load_data_url("data:image/png,abc", QVL_ALPHA_WHITE, &a, err), -1);
    ck_assert_msg(strstr(err, "base64") != NULL, "%s", err);
    ck_assert_int_eq(image_load_data_url("http://x/y.png", QVL_ALPHA_WHITE, &a, err), -1);
    ck_assert_int_eq(image_load_data_url("data:image/png;base64,aGVsbG8=", QVL_ALPHA_WHITE, &a, err), -1);
    ck_assert(a.rgb == NULL);
    free(url);
    free(b64);
    free(png);
}
END_TEST

/* --------------------------------------------------------- patch order */

START_TEST(patch_order) {
    /* A 64x32 picture whose bytes encode their position: no resize happens
     * (both sides are multiples of 32), so each patch row can be checked
     * against the order (h/2, w/2, 2, 2, C, T, 16, 16) by hand. */
    qvl_image img = { 64, 32, malloc(64 * 32 * 3) };
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 64; x++) {
            img.rgb[(y * 64 + x) * 3 + 0] = (unsigned char)x;
            img.rgb[(y * 64 + x) * 3 + 1] = (unsigned char)y;
            img.rgb[(y * 64 + x) * 3 + 2] = (unsigned char)(x + y);
        }
    qvl_preproc p = { .min_pixels = 0, .max_pixels = 1L << 20, .patch = 16, .temporal_patch = 2, .merge = 2,
                      .mean = { 0, 0, 0 }, .std = { 1, 1, 1 }, .rescale = 1.0 };
    char err[QVL_ERR_MAX];
    qvl_pixels px;
    ck_assert_msg(image_preprocess(&img, &p, &px, err) == 0, "%s", err);
    ck_assert_int_eq(px.grid_h, 2);
    ck_assert_int_eq(px.grid_w, 4);
    ck_assert_int_eq(px.patch_dim, 3 * 2 * 16 * 16);
    ck_assert(memcmp(px.resized.rgb, img.rgb, 64 * 32 * 3) == 0);
    /* Rows: 0 = block (0,0) cell (0,0); 1 = cell (0,1) -> x 16; 2 = cell (1,0) -> y 16;
     * 3 = cell (1,1); 4 = block (0,1) cell (0,0) -> x 32. */
    static const int row_x[5] = { 0, 16, 0, 16, 32 }, row_y[5] = { 0, 0, 16, 16, 0 };
    for (int r = 0; r < 5; r++) {
        const float *v = px.pixels + (size_t)r * px.patch_dim;
        ck_assert_float_eq(v[0], row_x[r]);                 /* c 0, t 0, (0, 0) */
        ck_assert_float_eq(v[1], row_x[r] + 1);             /* px 1 */
        ck_assert_float_eq(v[16 * 16 + 1], row_x[r] + 1);   /* t 1: the same frame */
        ck_assert_float_eq(v[2 * 16 * 16 + 16], row_y[r] + 1);          /* c 1 (y), py 1 */
        ck_assert_float_eq(v[4 * 16 * 16 + 17], row_x[r] + row_y[r] + 2); /* c 2, py 1, px 1 */
    }
    pixels_free(&px);

    /* Normalisation: (x * rescale - mean) / std. */
    p.rescale = 1.0 / 255;
    for (int c = 0; c < 3; c++) { p.mean[c] = 0.5f; p.std[c] = 0.25f; }
    ck_assert_msg(image_preprocess(&img, &p, &px, err) == 0, "%s", err);
    ck_assert_float_eq_tol(px.pixels[17], (1 / 255.0 - 0.5) / 0.25, 1e-5);   /* pixel (1, 1): x = 1 */
    pixels_free(&px);
    free(img.rgb);
}
END_TEST

/* ------------------------------------------------------------- bad input */

static void expect_error(const void *data, size_t n, const char *label, const char *what) {
    char err[QVL_ERR_MAX] = "";
    qvl_image img = { 1, 1, (uint8_t *)"x" };
    ck_assert_int_eq(image_load_mem(data, n, label, QVL_ALPHA_WHITE, &img, err), -1);
    ck_assert(img.rgb == NULL);
    ck_assert_msg(strstr(err, label) != NULL, "error does not name %s: %s", label, err);
    ck_assert_msg(strstr(err, what) != NULL, "error for %s lacks \"%s\": %s", label, what, err);
    ck_assert(strchr(err, '\n') == NULL);
}

START_TEST(bad_files) {
    char err[QVL_ERR_MAX] = "";
    qvl_image img;
    size_t len;

    char *png = slurp(data_path("images/a_80x60.png"), &len);
    expect_error(png, len / 2, "half.png", "truncated");
    expect_error(png, 20, "header-only.png", "invalid PNG");
    png[len / 2] ^= 0x55;                                     /* damaged IDAT: CRC error */
    expect_error(png, len, "damaged.png", "invalid PNG");
    free(png);

    char *jpg = slurp(data_path("images/d_300x200.jpg"), &len);
    expect_error(jpg, len / 2, "half.jpg", "truncated");
    expect_error(jpg, 100, "header-only.jpg", "invalid JPEG");
    free(jpg);

    char *text = slurp(data_path("chat_template.jinja"), &len);
    expect_error(text, len, "chat_template.jinja", "not an image");
    free(text);
    expect_error("", 0, "empty.png", "empty");

    const char *missing = data_path("images/no-such-picture.png");
    ck_assert_int_eq(image_load_file(missing, QVL_ALPHA_WHITE, &img, err), -1);
    ck_assert_msg(strstr(err, "no-such-picture.png") != NULL, "%s", err);
    ck_assert(img.rgb == NULL);
}
END_TEST

START_TEST(huge_dimensions) {
    /* A valid PNG header claiming 100000x100000 RGB, then an empty IDAT. */
    unsigned char png[128];
    size_t k = 0;
    memcpy(png, "\x89PNG\r\n\x1a\n", 8); k = 8;
    unsigned char ihdr[13] = { 0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 8, 2, 0, 0, 0 };
    k += png_chunk(png + k, "IHDR", ihdr, 13);
    k += png_chunk(png + k, "IDAT", NULL, 0);
    k += png_chunk(png + k, "IEND", NULL, 0);
    expect_error(png, k, "huge.png", "100000x100000");

    /* A small JPEG whose frame header is edited to say 60000x60000. */
    unsigned long size;
    unsigned char *jpg = quadrant_jpeg(0, 0, &size);
    unsigned long i;
    for (i = 0; i + 9 < size; i++)
        if (jpg[i] == 0xff && (jpg[i + 1] == 0xc0 || jpg[i + 1] == 0xc1)) break;
    ck_assert(i + 9 < size);
    jpg[i + 5] = jpg[i + 7] = 0xea;                           /* 0xea60 = 60000 */
    jpg[i + 6] = jpg[i + 8] = 0x60;
    expect_error(jpg, size, "huge.jpg", "60000x60000");
    free(jpg);

    /* The same for the stb_image path. */
    const char *ppm = "P6\n20000 20000\n255\n";
    expect_error(ppm, strlen(ppm), "huge.ppm", "20000x20000");
}
END_TEST

START_TEST(aspect_ratio_refused) {
    /* 201x1 is decodable but too elongated for the model. */
    unsigned char ppm[64 + 201 * 3];
    int n = snprintf((char *)ppm, 64, "P6\n201 1\n255\n");
    memset(ppm + n, 128, 201 * 3);
    qvl_image img;
    load_ok(ppm, (size_t)n + 201 * 3, "wide.ppm", QVL_ALPHA_WHITE, &img);
    qvl_preproc p;
    memset(&p, 0, sizeof p);
    p.min_pixels = 65536; p.max_pixels = 16777216;
    p.patch = 16; p.temporal_patch = 2; p.merge = 2; p.rescale = 1.0 / 255;
    for (int c = 0; c < 3; c++) { p.mean[c] = 0.5f; p.std[c] = 0.5f; }
    char err[QVL_ERR_MAX];
    qvl_pixels px;
    ck_assert_int_eq(image_preprocess(&img, &p, &px, err), -1);
    ck_assert_msg(strstr(err, "aspect ratio") && strstr(err, "201x1"), "%s", err);
    ck_assert(px.pixels == NULL);
    p.std[1] = 0;                                             /* bad settings are refused too */
    ck_assert_int_eq(image_preprocess(&img, &p, &px, err), -1);
    ck_assert_msg(strstr(err, "image_std") != NULL, "%s", err);
    image_free(&img);
}
END_TEST

START_TEST(resize_identity_and_flat) {
    char err[QVL_ERR_MAX];
    qvl_image src;
    ck_assert_msg(image_load_file(data_path("images/h_97x41.png"), QVL_ALPHA_WHITE, &src, err) == 0, "%s", err);
    qvl_image same;
    ck_assert_int_eq(image_resize(&src, src.width, src.height, &same, err), 0);
    ck_assert(memcmp(same.rgb, src.rgb, (size_t)src.width * src.height * 3) == 0);
    image_free(&same);
    ck_assert_int_eq(image_resize(&src, 0, 10, &same, err), -1);
    image_free(&src);

    /* A flat picture stays flat, shrinking or growing, along either axis. */
    qvl_image flat = { 50, 30, malloc(50 * 30 * 3) };
    memset(flat.rgb, 77, 50 * 30 * 3);
    static const int sizes[4][2] = { {13, 7}, {200, 30}, {50, 97}, {123, 11} };
    for (int k = 0; k < 4; k++) {
        qvl_image out;
        ck_assert_int_eq(image_resize(&flat, sizes[k][0], sizes[k][1], &out, err), 0);
        for (int i = 0; i < out.width * out.height * 3; i++)
            ck_assert_msg(abs(out.rgb[i] - 77) <= 1, "%dx%d: byte %d is %d", out.width, out.height, i, out.rgb[i]);
        image_free(&out);
    }
    free(flat.rgb);
}
END_TEST

int main(void) {
    Suite *s = suite_create("image");
    TCase *g = tcase_create("goldens");
    tcase_add_unchecked_fixture(g, load_goldens, free_goldens);
    tcase_set_timeout(g, 60);
    tcase_add_loop_test(g, golden_real, 0, N_IMAGES);
    tcase_add_loop_test(g, golden_tiny, 0, N_IMAGES);
    suite_add_tcase(s, g);

    TCase *u = tcase_create("units");
    tcase_add_test(u, smart_resize_rules);
    tcase_add_test(u, alpha_white_and_drop);
    tcase_add_test(u, grey_and_palette_to_rgb);
    tcase_add_test(u, exif_orientation);
    tcase_add_test(u, pnm_bmp_tga);
    tcase_add_test(u, png_built_and_exif);
    tcase_add_test(u, gif_first_frame);
    tcase_add_test(u, base64_and_data_url);
    tcase_add_test(u, patch_order);
    tcase_add_test(u, resize_identity_and_flat);
    suite_add_tcase(s, u);

    TCase *b = tcase_create("bad input");
    tcase_add_test(b, bad_files);
    tcase_add_test(b, huge_dimensions);
    tcase_add_test(b, aspect_ratio_refused);
    suite_add_tcase(s, b);
    return run_suite(s);
}
