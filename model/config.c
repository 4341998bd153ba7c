/* config.c - reads config.json, preprocessor_config.json and generation_config.json.
 *
 * Qwen3-VL configs come in two forms: transformers 4.x puts rope_theta in
 * text_config and the mRoPE layout in text_config.rope_scaling; 5.x moves both
 * into text_config.rope_parameters.  We accept either.  Every field the forward
 * pass needs is required; a missing or invalid one is an error naming the file
 * and the key, because guessing a shape would only fail later and less clearly. */
#include "config.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *label;      /* file name for messages */
    const char *prefix;     /* "text_config." etc. */
    char *err;
    int failed;
} reader;

static const cJSON *get(const cJSON *obj, const char *key) {
    return obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static void fail_key(reader *r, const char *key, const char *why) {
    if (r->failed) return;
    r->failed = 1;
    qvl_seterr(r->err, "%s: key %s%s %s", r->label, r->prefix, key, why);
}

/* A required positive (or >= min) integer. */
static int need_int(reader *r, const cJSON *obj, const char *key, int min) {
    const cJSON *j = get(obj, key);
    if (!j) { fail_key(r, key, "is missing"); return 0; }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < min ||
        j->valuedouble > 1e9) {
        fail_key(r, key, "must be an integer");
        return 0;
    }
    return (int)j->valuedouble;
}

static int opt_int(reader *r, const cJSON *obj, const char *key, int dflt, int min) {
    return get(obj, key) ? need_int(r, obj, key, min) : dflt;
}

static double need_num(reader *r, const cJSON *obj, const char *key) {
    const cJSON *j = get(obj, key);
    if (!j) { fail_key(r, key, "is missing"); return 0; }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0)) { fail_key(r, key, "must be a positive number"); return 0; }
    return j->valuedouble;
}

static int opt_bool(reader *r, const cJSON *obj, const char *key, int dflt) {
    const cJSON *j = get(obj, key);
    if (!j || cJSON_IsNull(j)) return dflt;
    if (!cJSON_IsBool(j)) { fail_key(r, key, "must be true or false"); return dflt; }
    return cJSON_IsTrue(j);
}

/* An integer array into out[max]; returns its length. */
static int int_array(reader *r, const cJSON *obj, const char *key, int *out, int max, int required) {
    const cJSON *j = get(obj, key);
    if (!j) {
        if (required) fail_key(r, key, "is missing");
        return 0;
    }
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) > max) { fail_key(r, key, "must be a short list of integers"); return 0; }
    int n = 0;
    for (const cJSON *x = j->child; x; x = x->next) {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble != floor(x->valuedouble)) {
            fail_key(r, key, "must hold non-negative integers");
            return 0;
        }
        out[n++] = (int)x->valuedouble;
    }
    return n;
}

static void parse_text(reader *r, const cJSON *t, const cJSON *top, qvl_config *c) {
    qvl_text_config *x = &c->text;
    r->prefix = "text_config.";
    x->hidden = need_int(r, t, "hidden_size", 1);
    x->layers = need_int(r, t, "num_hidden_layers", 1);
    x->heads = need_int(r, t, "num_attention_heads", 1);
    x->kv_heads = need_int(r, t, "num_key_value_heads", 1);
    x->head_dim = get(t, "head_dim") ? need_int(r, t, "head_dim", 2) : (x->heads ? x->hidden / x->heads : 0);
    x->intermediate = need_int(r, t, "intermediate_size", 1);
    x->vocab = need_int(r, t, "vocab_size", 1);
    x->rms_eps = (float)need_num(r, t, "rms_norm_eps");
    x->max_position = opt_int(r, t, "max_position_embeddings", 262144, 1);
    x->attention_bias = opt_bool(r, t, "attention_bias", 0);
    if (!r->failed && x->attention_bias) fail_key(r, "attention_bias", "is true: q/k/v biases are not part of Qwen3-VL and not supported");
    if (!r->failed && x->layers > QVL_MAX_LAYERS) fail_key(r, "num_hidden_layers", "is larger than qvl supports (256)");
    if (!r->failed && x->heads % x->kv_heads) fail_key(r, "num_attention_heads", "must be a multiple of num_key_value_heads");
    if (!r->failed && x->head_dim % 2) fail_key(r, "head_dim", "must be even");

    /* rope: 5.x rope_parameters {rope_theta, mrope_section, mrope_interleaved},
     * 4.x rope_scaling {mrope_section, mrope_interleaved} + rope_theta. */
    const cJSON *rp = get(t, "rope_parameters");
    const cJSON *rs = get(t, "rope_scaling");
    const cJSON *rope = cJSON_IsObject(rp) ? rp : rs;
    if (!cJSON_IsObject(rope)) {
        fail_key(r, "rope_scaling", "is missing (nor is there rope_parameters): need mrope_section");
        return;
    }
    r->prefix = rope == rp ? "text_config.rope_parameters." : "text_config.rope_scaling.";
    if (int_array(r, rope, "mrope_section", x->mrope_section, 3, 1) != 3 && !r->failed)
        fail_key(r, "mrope_section", "must have 3 entries");
    x->mrope_interleaved = opt_bool(r, rope, "mrope_interleaved", 1);
    if (get(rope, "rope_theta")) {
        x->rope_theta = need_num(r, rope, "rope_theta");
    } else {
        r->prefix = "text_config.";
        x->rope_theta = need_num(r, t, "rope_theta");
    }
    r->prefix = "text_config.";
    if (!r->failed && 2 * (x->mrope_section[0] + x->mrope_section[1] + x->mrope_section[2]) != x->head_dim)
        fail_key(r, "rope mrope_section", "must sum to head_dim / 2");

    const cJSON *tie = get(top, "tie_word_embeddings");
    if (!tie) tie = get(t, "tie_word_embeddings");
    x->tie_embeddings = tie ? cJSON_IsTrue(tie) : 0;

    if (c->is_moe) {
        x->num_experts = need_int(r, t, "num_experts", 1);
        x->experts_per_tok = need_int(r, t, "num_experts_per_tok", 1);
        x->moe_intermediate = need_int(r, t, "moe_intermediate_size", 1);
        x->decoder_sparse_step = opt_int(r, t, "decoder_sparse_step", 1, 1);
        x->n_mlp_only = int_array(r, t, "mlp_only_layers", x->mlp_only_layers, QVL_MAX_LAYERS, 0);
        if (!r->failed && x->experts_per_tok > x->num_experts)
            fail_key(r, "num_experts_per_tok", "must not exceed num_experts");
    }
}

static void parse_vision(reader *r, const cJSON *v, qvl_config *c) {
    qvl_vision_config *x = &c->vision;
    r->prefix = "vision_config.";
    x->depth = need_int(r, v, "depth", 1);
    x->hidden = need_int(r, v, "hidden_size", 1);
    x->heads = need_int(r, v, "num_heads", 1);
    x->intermediate = need_int(r, v, "intermediate_size", 1);
    x->patch = need_int(r, v, "patch_size", 1);
    x->temporal_patch = need_int(r, v, "temporal_patch_size", 1);
    x->merge = need_int(r, v, "spatial_merge_size", 1);
    x->in_channels = opt_int(r, v, "in_channels", 3, 1);
    x->out_hidden = need_int(r, v, "out_hidden_size", 1);
    x->num_pos_embed = need_int(r, v, "num_position_embeddings", 1);
    x->n_deepstack = int_array(r, v, "deepstack_visual_indexes", x->deepstack_idx, QVL_MAX_DEEPSTACK, 1);
    const cJSON *act = get(v, "hidden_act");
    snprintf(x->hidden_act, sizeof x->hidden_act, "%s", cJSON_IsString(act) ? act->valuestring : "gelu_pytorch_tanh");
    if (r->failed) return;
    int side = (int)lround(sqrt((double)x->num_pos_embed));
    if (side * side != x->num_pos_embed) fail_key(r, "num_position_embeddings", "must be a square number");
    else if (x->hidden % x->heads || (x->hidden / x->heads) % 4) fail_key(r, "num_heads", "must divide hidden_size into heads of a multiple of 4");
    else if (strcmp(x->hidden_act, "gelu_pytorch_tanh") && strcmp(x->hidden_act, "gelu"))
        fail_key(r, "hidden_act", "is not supported (gelu_pytorch_tanh or gelu)");
    for (int i = 0; i < x->n_deepstack && !r->failed; i++)
        if (x->deepstack_idx[i] >= x->depth) fail_key(r, "deepstack_visual_indexes", "must name blocks below depth");
    if (!r->failed && c->text.hidden && x->out_hidden != c->text.hidden)
        fail_key(r, "out_hidden_size", "must equal text_config.hidden_size");
}

/* The file's text as a JSON object, or NULL with the error naming the file. */
static cJSON *parse_object(const char *json, const char *label, char *err) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        qvl_seterr(err, "%s: not a valid JSON object", label);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int config_parse(const char *json, const char *label, qvl_config *c, char *err) {
    memset(c, 0, sizeof *c);
    cJSON *root = parse_object(json, label, err);
    if (!root) return -1;
    reader r = { .label = label, .prefix = "", .err = err };
    const cJSON *mt = get(root, "model_type");
    if (!cJSON_IsString(mt)) {
        fail_key(&r, "model_type", "is missing");
    } else if (strcmp(mt->valuestring, "qwen3_vl") && strcmp(mt->valuestring, "qwen3_vl_moe")) {
        qvl_seterr(err, "%s: model_type %s is not supported (supported: qwen3_vl, qwen3_vl_moe)", label, mt->valuestring);
        r.failed = 1;
    } else {
        snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
        c->is_moe = !strcmp(mt->valuestring, "qwen3_vl_moe");
    }
    const cJSON *t = get(root, "text_config"), *v = get(root, "vision_config");
    if (!r.failed && !cJSON_IsObject(t)) fail_key(&r, "text_config", "is missing");
    if (!r.failed && !cJSON_IsObject(v)) fail_key(&r, "vision_config", "is missing");
    if (!r.failed) parse_text(&r, t, root, c);
    if (!r.failed) parse_vision(&r, v, c);
    r.prefix = "";
    if (!r.failed) {
        c->image_token_id = need_int(&r, root, "image_token_id", 0);
        c->video_token_id = need_int(&r, root, "video_token_id", 0);
        c->vision_start_id = need_int(&r, root, "vision_start_token_id", 0);
        c->vision_end_id = need_int(&r, root, "vision_end_token_id", 0);
    }
    cJSON_Delete(root);
    return r.failed ? -1 : 0;
}

int config_load(const qvl_source *src, qvl_config *c, char *err) {
    char *json = NULL, path[4096];
    source_path(src, "config.json", path, sizeof path);
    int rc = source_read(src, "config.json", &json, NULL, err);
    if (rc == 0) qvl_seterr(err, "%s: no such file (is %s a Hugging Face model directory?)", path,
                            src->dir ? src->dir : "this");
    if (rc <= 0) return -1;
    rc = config_parse(json, path, c, err);
    free(json);
    return rc;
}

int config_layer_is_sparse(const qvl_config *c, int layer) {
    if (!c->is_moe || c->text.num_experts <= 0) return 0;
    for (int i = 0; i < c->text.n_mlp_only; i++)
        if (c->text.mlp_only_layers[i] == layer) return 0;
    return (layer + 1) % c->text.decoder_sparse_step == 0;
}

void preproc_defaults(qvl_preproc *p) {
    p->min_pixels = 65536;
    p->max_pixels = 16777216;
    p->patch = 16;
    p->temporal_patch = 2;
    p->merge = 2;
    for (int i = 0; i < 3; i++) { p->mean[i] = 0.5f; p->std[i] = 0.5f; }
    p->rescale = 1.0 / 255.0;
}

static void float3(reader *r, const cJSON *obj, const char *key, float *out) {
    const cJSON *j = get(obj, key);
    if (!j) return;
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 3) { fail_key(r, key, "must be a list of 3 numbers"); return; }
    int i = 0;
    for (const cJSON *x = j->child; x; x = x->next, i++) {
        if (!cJSON_IsNumber(x)) { fail_key(r, key, "must be a list of 3 numbers"); return; }
        out[i] = (float)x->valuedouble;
    }
}

int preproc_parse(const char *json, const char *label, qvl_preproc *p, char *err) {
    preproc_defaults(p);
    cJSON *root = parse_object(json, label, err);
    if (!root) return -1;
    reader r = { .label = label, .prefix = "", .err = err };
    const cJSON *size = get(root, "size");
    if (cJSON_IsObject(size) && get(size, "shortest_edge")) {
        r.prefix = "size.";
        p->min_pixels = need_int(&r, size, "shortest_edge", 1);
        p->max_pixels = need_int(&r, size, "longest_edge", 1);
        r.prefix = "";
    } else {
        p->min_pixels = opt_int(&r, root, "min_pixels", (int)p->min_pixels, 1);
        p->max_pixels = opt_int(&r, root, "max_pixels", (int)p->max_pixels, 1);
    }
    p->patch = opt_int(&r, root, "patch_size", p->patch, 1);
    p->temporal_patch = opt_int(&r, root, "temporal_patch_size", p->temporal_patch, 1);
    p->merge = opt_int(&r, root, "merge_size", p->merge, 1);
    float3(&r, root, "image_mean", p->mean);
    float3(&r, root, "image_std", p->std);
    if (get(root, "rescale_factor")) p->rescale = need_num(&r, root, "rescale_factor");
    if (!r.failed && p->min_pixels > p->max_pixels) fail_key(&r, "min_pixels", "must not exceed max_pixels");
    for (int i = 0; i < 3 && !r.failed; i++)
        if (!(p->std[i] > 0)) fail_key(&r, "image_std", "must be positive");
    cJSON_Delete(root);
    return r.failed ? -1 : 0;
}

int preproc_load(const qvl_source *src, qvl_preproc *p, char *err) {
    char *json = NULL, path[4096];
    source_path(src, "preprocessor_config.json", path, sizeof path);
    int rc = source_read(src, "preprocessor_config.json", &json, NULL, err);
    if (rc < 0) return -1;
    if (rc == 0) {
        preproc_defaults(p);
        return 0;
    }
    rc = preproc_parse(json, path, p, err);
    free(json);
    return rc;
}

static void opt_float(reader *r, const cJSON *obj, const char *key, int *has, float *out) {
    const cJSON *j = get(obj, key);
    if (!j || cJSON_IsNull(j)) return;
    if (!cJSON_IsNumber(j)) { fail_key(r, key, "must be a number"); return; }
    *has = 1;
    *out = (float)j->valuedouble;
}

int genconfig_parse(const char *json, const char *label, qvl_genconfig *g, char *err) {
    memset(g, 0, sizeof *g);
    cJSON *root = parse_object(json, label, err);
    if (!root) return -1;
    reader r = { .label = label, .prefix = "", .err = err };
    const cJSON *eos = get(root, "eos_token_id");
    if (cJSON_IsNumber(eos)) {
        g->eos[g->n_eos++] = eos->valueint;
    } else if (cJSON_IsArray(eos)) {
        g->n_eos = int_array(&r, root, "eos_token_id", g->eos, QVL_MAX_EOS, 1);
    } else if (eos && !cJSON_IsNull(eos)) {
        fail_key(&r, "eos_token_id", "must be an integer or a list of integers");
    }
    const cJSON *ds = get(root, "do_sample");
    if (cJSON_IsBool(ds)) { g->has_do_sample = 1; g->do_sample = cJSON_IsTrue(ds); }
    opt_float(&r, root, "temperature", &g->has_temperature, &g->temperature);
    opt_float(&r, root, "top_p", &g->has_top_p, &g->top_p);
    float topk = 0;
    opt_float(&r, root, "top_k", &g->has_top_k, &topk);
    g->top_k = (int)topk;
    opt_float(&r, root, "min_p", &g->has_min_p, &g->min_p);
    opt_float(&r, root, "repetition_penalty", &g->has_repetition_penalty, &g->repetition_penalty);
    opt_float(&r, root, "presence_penalty", &g->has_presence_penalty, &g->presence_penalty);
    cJSON_Delete(root);
    return r.failed ? -1 : 0;
}

int genconfig_load(const qvl_source *src, const qvl_config *c, qvl_genconfig *g, char *err) {
    char *json = NULL, path[4096];
    source_path(src, "generation_config.json", path, sizeof path);
    int rc = source_read(src, "generation_config.json", &json, NULL, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        rc = genconfig_parse(json, path, g, err);
        free(json);
        if (rc) return -1;
    } else {
        memset(g, 0, sizeof *g);
    }
    if (g->n_eos == 0) {
        /* The Qwen vocabulary's <|im_end|> and <|endoftext|>, when the vocabulary is that large. */
        if (c->text.vocab > 151645) {
            g->eos[g->n_eos++] = 151645;
            g->eos[g->n_eos++] = 151643;
        }
    }
    return 0;
}
