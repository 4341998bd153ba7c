/* weights.h - a loaded Qwen3-VL checkpoint: every tensor the forward pass reads,
 * bound by name and checked against the config.
 *
 * Matrices stay in the memory mapping in their stored dtype (bf16, f16 or f32);
 * only small vectors (norm gains, biases) are converted to float copies.  A matrix
 * is described by qvl_weight, which also covers the transposed storage of the
 * published MoE experts and slices of fused tensors (vision qkv, gate_up). */
#ifndef QVL_WEIGHTS_H
#define QVL_WEIGHTS_H

#include <stdint.h>
#include "config.h"
#include "safetensors.h"

/* y[out] = W[out, in] . x[in]
 * Stored either out-major (nn.Linear: row o holds the `in` weights of output o,
 * rows `ld` elements apart) or in-major (in_major = 1: row i holds the `out`
 * weights fed by input i, rows `ld` elements apart; the published MoE experts). */
typedef struct {
    const void *data;
    qvl_dtype dtype;      /* QVL_F32, QVL_F16 or QVL_BF16, or QVL_Q8 / QVL_Q4 (quant.h:
                             always out-major, and then ld counts bytes) */
    int out, in;
    int in_major;
    int64_t ld;
} qvl_weight;

typedef struct {
    float *norm1_w, *norm1_b;          /* [vh] LayerNorm */
    qvl_weight qkv;  float *qkv_b;     /* [3*vh, vh], [3*vh]  (q rows, then k, then v) */
    qvl_weight proj; float *proj_b;    /* [vh, vh], [vh] */
    float *norm2_w, *norm2_b;          /* [vh] */
    qvl_weight fc1;  float *fc1_b;     /* [vi, vh], [vi] */
    qvl_weight fc2;  float *fc2_b;     /* [vh, vi], [vh] */
} qvl_vision_block;

typedef struct {
    int norm_dim;                      /* vh (merger: norm before the 2x2 shuffle) or 4*vh (deepstack: after) */
    float *norm_w, *norm_b;            /* [norm_dim] */
    qvl_weight fc1; float *fc1_b;      /* [4vh, 4vh], [4vh] */
    qvl_weight fc2; float *fc2_b;      /* [out_hidden, 4vh], [out_hidden] */
} qvl_merger;

typedef struct {
    qvl_weight patch;    float *patch_b;   /* Conv3d as a matrix: [vh, C*T*P*P], [vh] */
    float *pos_embed;                      /* [num_pos_embed, vh] (float copy) */
    qvl_vision_block *blocks;              /* [depth] */
    qvl_merger merger;
    qvl_merger deepstack[QVL_MAX_DEEPSTACK];
} qvl_vision_weights;

typedef struct {
    float *attn_norm;                  /* input_layernorm [H] */
    qvl_weight q, k, v, o;             /* [heads*hd, H], [kv*hd, H], [kv*hd, H], [H, heads*hd] */
    float *q_norm, *k_norm;            /* [hd] */
    float *mlp_norm;                   /* post_attention_layernorm [H] */
    int sparse;                        /* MoE block? */
    /* dense SwiGLU */
    qvl_weight gate, up, down;         /* [I, H], [I, H], [H, I] */
    /* sparse MoE */
    qvl_weight router;                 /* mlp.gate [E, H] */
    qvl_weight *exp_gate, *exp_up, *exp_down;   /* [E] each: [Im, H], [Im, H], [H, Im] */
} qvl_layer;

typedef struct {
    qvl_weight embed;                  /* [vocab, H] */
    qvl_layer *layers;                 /* [layers] */
    float *final_norm;                 /* [H] */
    qvl_weight lm_head;                /* [vocab, H]; the embedding when tied */
} qvl_text_weights;

typedef struct {
    qvl_config cfg;
    qvl_vision_weights vision;
    qvl_text_weights text;
    st_set *st;                        /* owns the mapping */
    float **owned;                     /* the float copies above, freed with the model */
    int n_owned;
    /* quant.h: the quantized copies (model_quantize), freed with the model, and
     * whether the checkpoint is a file mapping (its unused pages can be dropped). */
    void *quant_data;
    int file_mapped;
} qvl_model;

/* Binds every tensor of an open checkpoint (taking ownership of `st` on success).
 * A missing tensor, wrong shape or unsupported dtype is an error naming it. */
qvl_model *model_bind(st_set *st, const qvl_config *cfg, char *err);
/* config.json + safetensors from a source. */
qvl_model *model_load(const qvl_source *src, char *err);
void model_free(qvl_model *m);

/* Reads one row of a weight (out-major or quantized) as float: used for embedding lookup. */
void weight_row_f32(const qvl_weight *w, int row, float *dst);

#endif
