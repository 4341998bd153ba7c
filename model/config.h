/* config.h - what a Qwen3-VL checkpoint's JSON files say.
 *
 * config.json (model_type qwen3_vl or qwen3_vl_moe; transformers 4.x form with
 * text_config.rope_scaling + rope_theta, or 5.x form with rope_parameters),
 * preprocessor_config.json and generation_config.json (both optional, with the
 * published defaults). */
#ifndef QVL_CONFIG_H
#define QVL_CONFIG_H

#include "source.h"

#define QVL_MAX_LAYERS 256
#define QVL_MAX_DEEPSTACK 8
#define QVL_MAX_EOS 8

typedef struct {
    int hidden;             /* hidden_size */
    int layers;             /* num_hidden_layers */
    int heads;              /* num_attention_heads */
    int kv_heads;           /* num_key_value_heads */
    int head_dim;           /* head_dim (may differ from hidden/heads) */
    int intermediate;       /* intermediate_size (dense MLP) */
    int vocab;              /* vocab_size */
    float rms_eps;          /* rms_norm_eps */
    double rope_theta;
    int mrope_section[3];   /* t, h, w frequency counts; sum = head_dim/2 */
    int mrope_interleaved;
    int tie_embeddings;     /* tie_word_embeddings (top level, else text_config) */
    int attention_bias;
    /* MoE (qwen3_vl_moe): num_experts = 0 for dense models */
    int num_experts;
    int experts_per_tok;
    int moe_intermediate;
    int decoder_sparse_step;
    int n_mlp_only;
    int mlp_only_layers[QVL_MAX_LAYERS];
    int max_position;       /* max_position_embeddings */
} qvl_text_config;

typedef struct {
    int depth;
    int hidden;
    int heads;
    int intermediate;
    int patch;              /* patch_size */
    int temporal_patch;     /* temporal_patch_size */
    int merge;              /* spatial_merge_size */
    int in_channels;
    int out_hidden;         /* out_hidden_size (= text hidden) */
    int num_pos_embed;      /* num_position_embeddings (a square grid) */
    int n_deepstack;
    int deepstack_idx[QVL_MAX_DEEPSTACK];
    char hidden_act[32];    /* gelu_pytorch_tanh */
} qvl_vision_config;

typedef struct {
    char model_type[32];
    int is_moe;
    qvl_text_config text;
    qvl_vision_config vision;
    int image_token_id, video_token_id, vision_start_id, vision_end_id;
} qvl_config;

typedef struct {
    long min_pixels, max_pixels;   /* size.shortest_edge / size.longest_edge, or min_pixels / max_pixels */
    int patch, temporal_patch, merge;
    float mean[3], std[3];
    double rescale;                /* rescale_factor */
} qvl_preproc;

typedef struct {
    int n_eos;
    int eos[QVL_MAX_EOS];
    /* Sampling defaults; has_* says whether the file set them. */
    int has_do_sample, do_sample;
    int has_temperature; float temperature;
    int has_top_p; float top_p;
    int has_top_k; int top_k;
    int has_min_p; float min_p;
    int has_repetition_penalty; float repetition_penalty;
    int has_presence_penalty; float presence_penalty;
} qvl_genconfig;

/* Parse config.json text; `label` names the file in errors. */
int config_parse(const char *json, const char *label, qvl_config *c, char *err);
int config_load(const qvl_source *src, qvl_config *c, char *err);

/* Whether decoder layer i uses the sparse MoE block. */
int config_layer_is_sparse(const qvl_config *c, int layer);

int preproc_parse(const char *json, const char *label, qvl_preproc *p, char *err);
/* Missing file: the published Qwen3-VL defaults (65536 .. 16777216 pixels, 16, 2, 2, 0.5/0.5, 1/255). */
int preproc_load(const qvl_source *src, qvl_preproc *p, char *err);
void preproc_defaults(qvl_preproc *p);

int genconfig_parse(const char *json, const char *label, qvl_genconfig *g, char *err);
/* Missing file: eos from config (151645, 151643 for the Qwen vocabulary), no sampling defaults. */
int genconfig_load(const qvl_source *src, const qvl_config *c, qvl_genconfig *g, char *err);

#endif
