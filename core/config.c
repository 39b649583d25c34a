#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"

/* Limits on dimensions: far above any published recurrent model, low
 * enough that every product below fits comfortably in size_t and int. */
#define MAX_D_MODEL 65536
#define MAX_LAYERS 1024
#define MAX_VOCAB (1 << 24)
#define MAX_D_STATE 4096
#define MAX_D_CONV 64
#define MAX_EXPAND 16

/* Python's json writes Infinity/-Infinity/NaN unquoted. Quote them (outside
 * strings) so jansson can read the document; get_float() then accepts the
 * strings. Returns a new buffer. */
static char *quote_nonfinite(const char *s, size_t n, size_t *out_len)
{
    size_t cap;
    if (__builtin_mul_overflow(n, 2, &cap) || __builtin_add_overflow(cap, 1, &cap))
        return NULL;
    char *o = rc_malloc(cap);
    if (!o)
        return NULL;
    size_t j = 0;
    int in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            o[j++] = c;
            if (c == '\\' && i + 1 < n)
                o[j++] = s[++i];
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            o[j++] = c;
            continue;
        }
        static const char *words[] = {"-Infinity", "Infinity", "NaN"};
        int hit = 0;
        for (int w = 0; w < 3 && !hit; w++) {
            size_t wl = strlen(words[w]);
            if (n - i >= wl && !memcmp(s + i, words[w], wl)) {
                o[j++] = '"';
                memcpy(o + j, words[w], wl);
                j += wl;
                o[j++] = '"';
                i += wl - 1;
                hit = 1;
            }
        }
        if (!hit)
            o[j++] = c;
    }
    o[j] = 0;
    *out_len = j;
    return o;
}

static int float_of(const json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    const char *s = NULL;
    if (json_is_object(v) && json_object_size(v) == 1)
        s = json_string_value(json_object_get(v, "__float__"));
    else if (json_is_string(v))
        s = json_string_value(v);
    if (!s)
        return -1;
    if (!strcmp(s, "Infinity") || !strcmp(s, "inf"))
        *out = INFINITY;
    else if (!strcmp(s, "-Infinity") || !strcmp(s, "-inf"))
        *out = -INFINITY;
    else if (!strcmp(s, "NaN") || !strcmp(s, "nan"))
        *out = NAN;
    else
        return -1;
    return 0;
}

struct ctx {
    const char *label;
    char *err;
    size_t errlen;
};

/* Integer key in [lo, hi]; absent -> def (or error if def < lo). */
static int get_int(struct ctx *c, const json_t *o, const char *prefix, const char *key, long lo,
                   long hi, long def, int *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (def < lo)
            return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: missing required key %s%s",
                           c->label, prefix, key);
        *out = (int)def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return rc_fail(c->err, c->errlen, RC_EFORMAT,
                       "%s: %s%s must be an integer in [%ld, %ld]", c->label, prefix, key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_bool(struct ctx *c, const json_t *o, const char *prefix, const char *key,
                    int def, int *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: %s%s must be true or false",
                       c->label, prefix, key);
    *out = json_is_true(v);
    return 0;
}

static int get_eps(struct ctx *c, const json_t *o, const char *key, float *out)
{
    const json_t *v = json_object_get(o, key);
    double d;
    if (!v || json_is_null(v)) {
        *out = 1e-5f;
        return 0;
    }
    if (float_of(v, &d) || !(d > 0 && d < 1))
        return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: %s must be a number in (0, 1)",
                       c->label, key);
    *out = (float)d;
    return 0;
}

/* dt limit as [lo, hi] with 0 <= lo < hi (hi may be inf). */
static int get_dt_limit(struct ctx *c, const json_t *o, const char *key, struct model_config *cfg)
{
    const json_t *v = json_object_get(o, key);
    cfg->dt_min = 0.0f;
    cfg->dt_max = INFINITY;
    if (!v || json_is_null(v))
        return 0;
    double lo, hi;
    if (!json_is_array(v) || json_array_size(v) != 2 || float_of(json_array_get(v, 0), &lo) ||
        float_of(json_array_get(v, 1), &hi) || !(lo >= 0) || !(hi > lo))
        return rc_fail(c->err, c->errlen, RC_EFORMAT,
                       "%s: %s must be [min, max] with 0 <= min < max", c->label, key);
    cfg->dt_min = (float)lo;
    cfg->dt_max = (float)hi;
    return 0;
}

static int check_act(struct ctx *c, const json_t *o, const char *prefix, const char *key)
{
    const char *a = json_string_value(json_object_get(o, key));
    if (a && strcmp(a, "silu") && strcmp(a, "swish"))
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: %s%s '%.32s' is not supported (only silu)", c->label, prefix, key, a);
    return 0;
}

static int parse_state_spaces(struct ctx *c, const json_t *root, struct model_config *cfg)
{
    int rc, v, expand, pad;
    cfg->naming = NAMING_STATE_SPACES;
    if ((rc = get_int(c, root, "", "d_model", 1, MAX_D_MODEL, -1, &cfg->d_model)) ||
        (rc = get_int(c, root, "", "n_layer", 1, MAX_LAYERS, -1, &cfg->n_layer)) ||
        (rc = get_int(c, root, "", "vocab_size", 1, MAX_VOCAB, -1, &cfg->vocab_size)) ||
        (rc = get_int(c, root, "", "pad_vocab_size_multiple", 1, 4096, 8, &pad)) ||
        (rc = get_int(c, root, "", "d_intermediate", 0, INT32_MAX, 0, &v)))
        return rc;
    if (v > 0)
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: d_intermediate > 0 (MLP blocks) is not supported", c->label);
    if ((rc = get_bool(c, root, "", "tie_embeddings", 1, &cfg->tie_embeddings)) ||
        (rc = get_bool(c, root, "", "rms_norm", 1, &v)) ||
        (rc = get_eps(c, root, "norm_epsilon", &cfg->norm_eps)))
        return rc;
    if (!v)
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: rms_norm false (LayerNorm blocks) is not supported", c->label);
    const json_t *attn = json_object_get(root, "attn_layer_idx");
    if (attn && !json_is_null(attn) && (!json_is_array(attn) || json_array_size(attn) > 0))
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: attn_layer_idx: attention layers are not supported", c->label);
    size_t nv = ((size_t)cfg->vocab_size + (size_t)pad - 1) / (size_t)pad * (size_t)pad;
    if (nv > MAX_VOCAB)
        return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: padded vocab too large", c->label);
    cfg->n_vocab = (int)nv;

    const json_t *ssm = json_object_get(root, "ssm_cfg");
    if (ssm && !json_is_null(ssm) && !json_is_object(ssm))
        return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: ssm_cfg must be an object", c->label);
    json_t *empty = NULL;
    if (!ssm || json_is_null(ssm))
        ssm = empty = json_object();
    const char *layer = json_string_value(json_object_get(ssm, "layer"));
    const char *P = "ssm_cfg.";
    if (json_object_get(ssm, "layer") && !layer)
        rc = rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: ssm_cfg.layer must be a string", c->label);
    else if (!layer || !strcmp(layer, "Mamba1"))
        cfg->arch = MODEL_MAMBA1;
    else if (!strcmp(layer, "Mamba2"))
        cfg->arch = MODEL_MAMBA2;
    else
        rc = rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                     "%s: ssm_cfg.layer '%.32s' is not supported (Mamba1 or Mamba2)", c->label,
                     layer);
    if (rc)
        goto out;
    int m2 = cfg->arch == MODEL_MAMBA2;
    if ((rc = get_int(c, ssm, P, "d_state", 1, MAX_D_STATE, m2 ? 128 : 16, &cfg->d_state)) ||
        (rc = get_int(c, ssm, P, "d_conv", 1, MAX_D_CONV, 4, &cfg->d_conv)) ||
        (rc = get_int(c, ssm, P, "expand", 1, MAX_EXPAND, 2, &expand)) ||
        (rc = get_bool(c, ssm, P, "bias", 0, &cfg->proj_bias)) ||
        (rc = get_bool(c, ssm, P, "conv_bias", 1, &cfg->conv_bias)) ||
        (rc = check_act(c, ssm, P, "activation")))
        goto out;
    cfg->d_inner = expand * cfg->d_model;
    if (m2) {
        if ((rc = get_int(c, ssm, P, "headdim", 1, MAX_D_MODEL, 64, &cfg->headdim)) ||
            (rc = get_int(c, ssm, P, "ngroups", 1, MAX_D_MODEL, 1, &cfg->ngroups)) ||
            (rc = get_bool(c, ssm, P, "rmsnorm", 1, &cfg->rmsnorm_gated)) ||
            (rc = get_bool(c, ssm, P, "norm_before_gate", 0, &cfg->norm_before_gate)) ||
            (rc = get_bool(c, ssm, P, "D_has_hdim", 0, &cfg->d_has_hdim)) ||
            (rc = get_dt_limit(c, ssm, "dt_limit", cfg)))
            goto out;
        const json_t *dssm = json_object_get(ssm, "d_ssm");
        if (dssm && !json_is_null(dssm) &&
            (!json_is_integer(dssm) || json_integer_value(dssm) != cfg->d_inner)) {
            rc = rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                         "%s: ssm_cfg.d_ssm != d_inner (gated MLP part) is not supported",
                         c->label);
            goto out;
        }
    } else {
        const json_t *r = json_object_get(ssm, "dt_rank");
        if (!r || json_is_null(r) || (json_is_string(r) && !strcmp(json_string_value(r), "auto")))
            cfg->dt_rank = (cfg->d_model + 15) / 16;
        else if ((rc = get_int(c, ssm, P, "dt_rank", 1, MAX_D_MODEL, -1, &cfg->dt_rank)))
            goto out;
    }
out:
    json_decref(empty);
    return rc;
}

static int parse_hf(struct ctx *c, const json_t *root, const char *mtype, struct model_config *cfg)
{
    int rc, expand, v;
    cfg->naming = NAMING_HF;
    cfg->arch = !strcmp(mtype, "mamba2") ? MODEL_MAMBA2 : MODEL_MAMBA1;
    int m2 = cfg->arch == MODEL_MAMBA2;
    if ((rc = get_int(c, root, "", "hidden_size", 1, MAX_D_MODEL, -1, &cfg->d_model)) ||
        (rc = get_int(c, root, "", "num_hidden_layers", 1, MAX_LAYERS, -1, &cfg->n_layer)) ||
        (rc = get_int(c, root, "", "vocab_size", 1, MAX_VOCAB, -1, &cfg->vocab_size)) ||
        (rc = get_int(c, root, "", "state_size", 1, MAX_D_STATE, m2 ? 128 : 16,
                      &cfg->d_state)) ||
        (rc = get_int(c, root, "", "conv_kernel", 1, MAX_D_CONV, 4, &cfg->d_conv)) ||
        (rc = get_int(c, root, "", "expand", 1, MAX_EXPAND, 2, &expand)) ||
        (rc = get_bool(c, root, "", "use_bias", 0, &cfg->proj_bias)) ||
        (rc = get_bool(c, root, "", "use_conv_bias", 1, &cfg->conv_bias)) ||
        (rc = get_bool(c, root, "", "tie_word_embeddings", m2 ? 0 : 1, &cfg->tie_embeddings)) ||
        (rc = get_eps(c, root, "layer_norm_epsilon", &cfg->norm_eps)) ||
        (rc = check_act(c, root, "", "hidden_act")))
        return rc;
    cfg->n_vocab = cfg->vocab_size;
    cfg->d_inner = expand * cfg->d_model;
    if (m2) {
        int nheads;
        if ((rc = get_int(c, root, "", "head_dim", 1, MAX_D_MODEL, 64, &cfg->headdim)) ||
            (rc = get_int(c, root, "", "num_heads", 1, MAX_D_MODEL,
                          cfg->d_inner / cfg->headdim, &nheads)) ||
            (rc = get_int(c, root, "", "n_groups", 1, MAX_D_MODEL, 1, &cfg->ngroups)) ||
            (rc = get_bool(c, root, "", "rms_norm", 1, &cfg->rmsnorm_gated)) ||
            (rc = get_dt_limit(c, root, "time_step_limit", cfg)))
            return rc;
        if ((long)nheads * cfg->headdim != cfg->d_inner)
            return rc_fail(c->err, c->errlen, RC_EFORMAT,
                           "%s: num_heads %d x head_dim %d != expand x hidden_size %d", c->label,
                           nheads, cfg->headdim, cfg->d_inner);
    } else {
        const json_t *r = json_object_get(root, "time_step_rank");
        if (!r || json_is_null(r) || (json_is_string(r) && !strcmp(json_string_value(r), "auto")))
            cfg->dt_rank = (cfg->d_model + 15) / 16;
        else if ((rc = get_int(c, root, "", "time_step_rank", 1, MAX_D_MODEL, -1,
                               &cfg->dt_rank)))
            return rc;
        if ((rc = get_int(c, root, "", "intermediate_size", 1, MAX_D_MODEL * MAX_EXPAND,
                          cfg->d_inner, &v)))
            return rc;
        if (v != cfg->d_inner)
            return rc_fail(c->err, c->errlen, RC_EFORMAT,
                           "%s: intermediate_size %d != expand x hidden_size %d", c->label, v,
                           cfg->d_inner);
    }
    return 0;
}

/* A number in [lo, hi] (JSON integer or real); absent or null -> def. */
static int get_num(struct ctx *c, const json_t *o, const char *key, double lo, double hi,
                   double def, double *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    double d;
    if (float_of(v, &d) || !(d >= lo && d <= hi))
        return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: %s must be a number in [%g, %g]",
                       c->label, key, lo, hi);
    *out = d;
    return 0;
}

/* A key that must be absent, null, or the given boolean. */
static int want_bool(struct ctx *c, const json_t *o, const char *key, int want, const char *why)
{
    int v;
    int rc = get_bool(c, o, "", key, want, &v);
    if (rc)
        return rc;
    if (v != want)
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED, "%s: %s %s is not supported (%s)",
                       c->label, key, v ? "true" : "false", why);
    return 0;
}

/* fla's GLAConfig (model_type "gla"), defaults as fla's. Keys read: every
 * one that changes what GLAForCausalLM computes; attn_mode, fuse_swiglu,
 * fuse_cross_entropy, initializer_range and the like only choose kernels
 * or training behaviour. */
static int parse_fla_gla(struct ctx *c, const json_t *root, struct model_config *cfg)
{
    int rc, v;
    double ek = 0, ev = 0, ratio = 0, norm = 0, clamp = 0;
    cfg->naming = NAMING_FLA;
    cfg->arch = MODEL_GLA;
    if ((rc = get_int(c, root, "", "hidden_size", 1, MAX_D_MODEL, -1, &cfg->d_model)) ||
        (rc = get_int(c, root, "", "num_hidden_layers", 1, MAX_LAYERS, -1, &cfg->n_layer)) ||
        (rc = get_int(c, root, "", "vocab_size", 1, MAX_VOCAB, -1, &cfg->vocab_size)) ||
        (rc = get_int(c, root, "", "num_heads", 1, MAX_D_MODEL, 4, &cfg->nheads)) ||
        (rc = get_int(c, root, "", "num_kv_heads", 1, MAX_D_MODEL, cfg->nheads,
                      &cfg->gla_kv_heads)) ||
        (rc = get_num(c, root, "expand_k", 1.0 / MAX_D_MODEL, MAX_EXPAND, 0.5, &ek)) ||
        (rc = get_num(c, root, "expand_v", 1.0 / MAX_D_MODEL, MAX_EXPAND, 1.0, &ev)) ||
        (rc = get_num(c, root, "hidden_ratio", 1.0 / 64, 64, 4, &ratio)) ||
        (rc = get_int(c, root, "", "intermediate_size", 0, MAX_D_MODEL * MAX_EXPAND, 0,
                      &cfg->gla_ff)) ||
        (rc = get_bool(c, root, "", "use_short_conv", 0, &cfg->gla_short_conv)) ||
        (rc = get_int(c, root, "", "conv_size", 1, MAX_D_CONV, 4, &cfg->d_conv)) ||
        (rc = get_bool(c, root, "", "use_output_gate", 1, &cfg->gla_out_gate)) ||
        (rc = get_num(c, root, "gate_logit_normalizer", 1e-6, 1e6, 16, &norm)) ||
        (rc = get_int(c, root, "", "gate_low_rank_dim", 1, MAX_D_MODEL, 16,
                      &cfg->gla_low_rank)) ||
        (rc = get_num(c, root, "clamp_min", -1e30, 0, -INFINITY, &clamp)) ||
        (rc = get_bool(c, root, "", "elementwise_affine", 1, &cfg->gla_affine)) ||
        (rc = get_bool(c, root, "", "fuse_norm", 1, &cfg->gla_fuse_norm)) ||
        (rc = get_bool(c, root, "", "tie_word_embeddings", 0, &cfg->tie_embeddings)) ||
        (rc = want_bool(c, root, "use_gk", 1, "fla's GLA layer always has the key gate")) ||
        (rc = want_bool(c, root, "use_gv", 0, "a value gate is not implemented")) ||
        (rc = check_act(c, root, "", "hidden_act")))
        return rc;
    /* norm_eps: fla's default is 1e-6 (get_eps defaults to 1e-5). */
    double eps;
    if ((rc = get_num(c, root, "norm_eps", 1e-30, 0.5, 1e-6, &eps)))
        return rc;
    cfg->norm_eps = (float)eps;
    const json_t *fm = json_object_get(root, "feature_map");
    if (fm && !json_is_null(fm))
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: feature_map '%.32s' is not supported (only null: q and k as "
                       "projected)",
                       c->label, json_is_string(fm) ? json_string_value(fm) : "?");
    const json_t *attn = json_object_get(root, "attn");
    if (attn && !json_is_null(attn))
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: attn: hybrid softmax-attention layers are not supported", c->label);
    if ((rc = get_int(c, root, "", "attnres_block_size", 0, INT32_MAX, 0, &v)))
        return rc;
    if (v)
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: attnres_block_size (attention residuals) is not supported", c->label);
    const char *fn = json_string_value(json_object_get(root, "gate_fn"));
    if (fn && strcmp(fn, "swish") && strcmp(fn, "silu"))
        return rc_fail(c->err, c->errlen, RC_EUNSUPPORTED,
                       "%s: gate_fn '%.32s' is not supported (only swish)", c->label, fn);
    /* Python's int(hidden * expand): truncation. */
    double kd = floor((double)cfg->d_model * ek), vd = floor((double)cfg->d_model * ev);
    if (kd < 1 || vd < 1)
        return rc_fail(c->err, c->errlen, RC_EFORMAT,
                       "%s: hidden_size x expand_k / expand_v is below 1", c->label);
    cfg->gla_key_dim = (int)kd;
    cfg->d_inner = (int)vd;
    if (cfg->gla_ff == 0) { /* fla's GatedMLP: 2/3 of hidden x ratio, up to a multiple of 256 */
        long ff = (long)((double)cfg->d_model * ratio * 2.0 / 3.0);
        ff = 256 * ((ff + 255) / 256);
        if (ff < 1 || ff > (long)MAX_D_MODEL * MAX_EXPAND)
            return rc_fail(c->err, c->errlen, RC_EFORMAT, "%s: MLP width %ld out of range",
                           c->label, ff);
        cfg->gla_ff = (int)ff;
    }
    cfg->gla_gate_norm = (float)norm;
    cfg->gla_clamp_min = (float)clamp;
    return 0; /* d_conv without short conv, n_vocab: gla_complete */
}

int config_parse(const char *text, size_t len, const char *label, struct model_config *cfg,
                 char *err, size_t errlen)
{
    struct ctx c = {label, err, errlen};
    memset(cfg, 0, sizeof *cfg);
    cfg->rmsnorm_gated = 1;
    size_t qlen;
    char *q = quote_nonfinite(text, len, &qlen);
    if (!q)
        return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", label);
    json_error_t je;
    json_t *root = json_loadb(q, qlen, JSON_REJECT_DUPLICATES, &je);
    rc_free(q);
    if (!root)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: invalid JSON at line %d column %d: %s",
                       label, je.line, je.column, je.text);
    int rc;
    if (!json_is_object(root)) {
        rc = rc_fail(err, errlen, RC_EFORMAT, "%s: not a JSON object", label);
    } else if (json_object_get(root, "d_model")) {
        rc = parse_state_spaces(&c, root, cfg);
    } else if (json_object_get(root, "hidden_size")) {
        const char *mt = json_string_value(json_object_get(root, "model_type"));
        if (!mt) {
            json_t *arch = json_array_get(json_object_get(root, "architectures"), 0);
            const char *a = json_string_value(arch);
            mt = a && !strcmp(a, "Mamba2ForCausalLM") ? "mamba2"
                 : a && !strcmp(a, "MambaForCausalLM") ? "mamba"
                 : a && !strcmp(a, "GLAForCausalLM")   ? "gla"
                                                        : NULL;
        }
        if (!mt)
            rc = rc_fail(err, errlen, RC_EFORMAT,
                         "%s: transformers config without model_type or known architectures",
                         label);
        else if (!strcmp(mt, "gla"))
            rc = parse_fla_gla(&c, root, cfg);
        else if (strcmp(mt, "mamba2") && strcmp(mt, "mamba"))
            rc = rc_fail(err, errlen, RC_EUNSUPPORTED,
                         "%s: model_type '%.32s' is not supported (mamba, mamba2 or gla)", label,
                         mt);
        else
            rc = parse_hf(&c, root, mt, cfg);
    } else {
        rc = rc_fail(err, errlen, RC_EFORMAT,
                     "%s: neither a state-spaces (d_model) nor a transformers (hidden_size) "
                     "Mamba config",
                     label);
    }
    if (rc == 0) /* optional, any config style: shown by /v1/models and the web page */
        rc = get_int(&c, root, "", "training_context", 0, INT32_MAX, 0, &cfg->training_context);
    json_decref(root);
    if (rc == 0)
        rc = model_config_complete(cfg, err, errlen);
    return rc;
}

/* GLA: heads, widths and the projection row (see config.h). */
static int gla_complete(struct model_config *c, char *err, size_t errlen)
{
    if (c->d_model < 1 || c->d_model > MAX_D_MODEL || c->n_layer < 1 || c->n_layer > MAX_LAYERS ||
        c->vocab_size < 1 || c->vocab_size > MAX_VOCAB || c->d_conv < 1 ||
        c->d_conv > MAX_D_CONV || c->d_inner < 1 || c->d_inner > MAX_D_MODEL * MAX_EXPAND ||
        c->gla_key_dim < 1 || c->gla_key_dim > MAX_D_MODEL * MAX_EXPAND || c->gla_ff < 1 ||
        c->gla_ff > MAX_D_MODEL * MAX_EXPAND || c->gla_low_rank < 1 ||
        c->gla_low_rank > MAX_D_MODEL || c->nheads < 1 || c->gla_kv_heads < 1)
        return rc_fail(err, errlen, RC_EINVAL, "config: dimension out of range");
    if (c->gla_key_dim % c->nheads || c->d_inner % c->nheads)
        return rc_fail(err, errlen, RC_EINVAL,
                       "config: num_heads %d does not divide key dim %d and value dim %d",
                       c->nheads, c->gla_key_dim, c->d_inner);
    if (c->nheads % c->gla_kv_heads)
        return rc_fail(err, errlen, RC_EINVAL, "config: num_kv_heads %d does not divide num_heads %d",
                       c->gla_kv_heads, c->nheads);
    if (!(c->gla_gate_norm > 0) || !(c->norm_eps > 0) || c->gla_clamp_min > 0 ||
        isnan(c->gla_clamp_min))
        return rc_fail(err, errlen, RC_EINVAL, "config: gate normaliser, eps or clamp_min");
    if (c->n_vocab == 0)
        c->n_vocab = c->vocab_size;
    if (c->n_vocab < c->vocab_size || c->n_vocab > MAX_VOCAB)
        return rc_fail(err, errlen, RC_EINVAL, "config: n_vocab %d < vocab_size %d", c->n_vocab,
                       c->vocab_size);
    if (!c->gla_short_conv)
        c->d_conv = 1;
    const int g = c->nheads / c->gla_kv_heads;
    c->gla_dk = c->gla_key_dim / c->nheads;
    c->gla_dv = c->d_inner / c->nheads;
    const int kk = c->gla_key_dim / g, vv = c->d_inner / g; /* k, v and gk widths */
    c->conv_dim = c->gla_short_conv ? c->gla_key_dim + kk + vv : 0;
    c->d_in_proj = c->gla_key_dim + kk + vv + (c->gla_out_gate ? c->d_inner : 0) + kk +
                   c->gla_low_rank;
    c->d_state = c->gla_dk; /* informational (/v1/models): key width of one head's state */
    c->headdim = c->gla_dv;
    c->ngroups = c->gla_kv_heads;
    c->conv_bias = c->proj_bias = 0;
    c->rmsnorm_gated = 1;
    c->dt_rank = 0;
    c->dt_min = 0.0f;
    c->dt_max = INFINITY;
    return 0;
}

int model_config_complete(struct model_config *cfg, char *err, size_t errlen)
{
    if (cfg->arch != MODEL_MAMBA1 && cfg->arch != MODEL_MAMBA2 && cfg->arch != MODEL_GLA)
        return rc_fail(err, errlen, RC_EINVAL, "config: unknown architecture %d", cfg->arch);
    if (cfg->arch == MODEL_GLA)
        return gla_complete(cfg, err, errlen);
    if (cfg->d_model < 1 || cfg->d_model > MAX_D_MODEL || cfg->n_layer < 1 ||
        cfg->n_layer > MAX_LAYERS || cfg->vocab_size < 1 || cfg->vocab_size > MAX_VOCAB ||
        cfg->d_state < 1 || cfg->d_state > MAX_D_STATE || cfg->d_conv < 1 ||
        cfg->d_conv > MAX_D_CONV || cfg->d_inner < 1 || cfg->d_inner > MAX_D_MODEL * MAX_EXPAND)
        return rc_fail(err, errlen, RC_EINVAL, "config: dimension out of range");
    if (cfg->n_vocab == 0)
        cfg->n_vocab = (cfg->vocab_size + 15) / 16 * 16;
    if (cfg->n_vocab < cfg->vocab_size || cfg->n_vocab > MAX_VOCAB)
        return rc_fail(err, errlen, RC_EINVAL, "config: n_vocab %d < vocab_size %d",
                       cfg->n_vocab, cfg->vocab_size);
    if (cfg->norm_eps <= 0)
        cfg->norm_eps = 1e-5f;
    if (cfg->arch == MODEL_MAMBA2) {
        if (cfg->headdim < 1 || cfg->d_inner % cfg->headdim)
            return rc_fail(err, errlen, RC_EINVAL,
                           "config: headdim %d does not divide d_inner %d", cfg->headdim,
                           cfg->d_inner);
        cfg->nheads = cfg->d_inner / cfg->headdim;
        if (cfg->ngroups < 1 || cfg->nheads % cfg->ngroups)
            return rc_fail(err, errlen, RC_EINVAL,
                           "config: ngroups %d does not divide nheads %d", cfg->ngroups,
                           cfg->nheads);
        if (cfg->rmsnorm_gated && cfg->d_inner % cfg->ngroups)
            return rc_fail(err, errlen, RC_EINVAL, "config: ngroups does not divide d_inner");
        if (!(cfg->dt_max > cfg->dt_min) || cfg->dt_min < 0) {
            if (cfg->dt_min == 0 && cfg->dt_max == 0)
                cfg->dt_max = INFINITY; /* zeroed struct: no limit */
            else
                return rc_fail(err, errlen, RC_EINVAL, "config: dt limits [%g, %g]",
                               (double)cfg->dt_min, (double)cfg->dt_max);
        }
        cfg->conv_dim = cfg->d_inner + 2 * cfg->ngroups * cfg->d_state;
        cfg->d_in_proj = 2 * cfg->d_inner + 2 * cfg->ngroups * cfg->d_state + cfg->nheads;
        cfg->dt_rank = 0;
    } else {
        if (cfg->dt_rank < 1 || cfg->dt_rank > cfg->d_inner)
            return rc_fail(err, errlen, RC_EINVAL, "config: dt_rank %d out of range",
                           cfg->dt_rank);
        cfg->conv_dim = cfg->d_inner;
        cfg->d_in_proj = 2 * cfg->d_inner;
        cfg->headdim = cfg->nheads = cfg->ngroups = 0;
    }
    return 0;
}

int model_config_named(const char *name, struct model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->naming = NAMING_STATE_SPACES;
    cfg->d_conv = 4;
    cfg->conv_bias = 1;
    cfg->tie_embeddings = 1;
    cfg->norm_eps = 1e-5f;
    cfg->vocab_size = 50277;
    cfg->dt_max = INFINITY;
    cfg->rmsnorm_gated = 1;
    if (!strcmp(name, "mamba2-130m") || !strcmp(name, "mamba2-370m")) {
        cfg->arch = MODEL_MAMBA2;
        cfg->d_model = name[7] == '1' ? 768 : 1024;
        cfg->n_layer = name[7] == '1' ? 24 : 48;
        cfg->n_vocab = 50288;
        cfg->d_state = 128;
        cfg->headdim = 64;
        cfg->ngroups = 1;
    } else if (!strcmp(name, "mamba-130m")) {
        cfg->arch = MODEL_MAMBA1;
        cfg->d_model = 768;
        cfg->n_layer = 24;
        cfg->n_vocab = 50280;
        cfg->d_state = 16;
        cfg->dt_rank = 48;
    } else {
        return RC_EINVAL;
    }
    cfg->d_inner = 2 * cfg->d_model;
    return model_config_complete(cfg, NULL, 0);
}
