/*
 * model.c — load a checkpoint directory (or make random weights) into a
 * struct model. Table-driven: weight_specs() lists every tensor the config
 * implies, with its canonical (state-spaces) name and shape; loading looks
 * each one up in the shards, checks it, and either points into the mapped
 * file (aligned fp32) or converts it into the arena.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation to fail */
#include <xxhash.h>

#include <jansson.h>

#include "alloc.h"
#include "config.h"
#include "errors.h"
#include "kernels.h"
#include "model_impl.h"
#include "safetensors.h"

#define MAX_CONFIG_BYTES (1u << 20)
#define MAX_SHARDS 1024

enum wkind {
    W_PLAIN,   /* used as stored */
    W_PACK,    /* projection (n, k) -> GEMM_NR-column panels (kernels.h) */
    W_CONV,    /* (channels, 1, d_conv) -> tap-major (d_conv, conv_dim), at channel
                  coff: GLA's q, k and v convs share one such array (the first part
                  owns the slot) */
    W_NEG_EXP, /* A_log -> A = -exp(A_log) */
    W_TILE,    /* (n) -> (tile x n): GLA's per-head norm weight over all heads */
};

enum winit { I_PROJ, I_EMBED, I_ONE, I_CONV, I_BIAS, I_ALOG, I_DTBIAS, I_D };

struct wspec {
    char name[96];
    int ndim;
    int64_t shape[3];
    int kind;
    int init;
    int fan_in;
    void *dst; /* the struct field: const void ** for W_PACK, else const float ** */
    int coff;  /* W_CONV: first channel in the shared array (> 0: not the owner) */
    int tile;  /* W_TILE: copies */
    /* filled while loading */
    const struct st_tensor *t;
};

/* Append one spec. */
static void spec(struct wspec *s, int *n, const char *name, int kind, int init, int fan_in,
                 void *dst, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct wspec *w = &s[(*n)++];
    memset(w, 0, sizeof *w);
    snprintf(w->name, sizeof w->name, "%s", name);
    w->ndim = ndim;
    w->shape[0] = d0, w->shape[1] = d1, w->shape[2] = d2;
    w->kind = kind;
    w->init = init;
    w->fan_in = fan_in;
    w->dst = dst;
}

static int max_specs(const struct model_config *c) { return 4 + c->n_layer * 20; }

/* fla's GLAForCausalLM, with fla's names (the canonical ones for GLA). */
static int gla_specs(struct model *m, struct wspec *s)
{
    const struct model_config *c = &m->cfg;
    int n = 0;
    char nm[96];
    const int64_t D = c->d_model, KD = c->gla_key_dim, VD = c->d_inner;
    const int64_t g = c->nheads / c->gla_kv_heads, KK = KD / g, VV = VD / g;
    const int64_t R = c->gla_low_rank, FF = c->gla_ff, K = c->d_conv;
    spec(s, &n, "model.embeddings.weight", W_PACK, I_EMBED, 1,
         c->tie_embeddings ? (void *)&m->lm_head : (void *)&m->embed, 2, c->n_vocab, D, 0);
    for (int i = 0; i < c->n_layer; i++) {
        struct layer *L = &m->layers[i];
#define NAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", i, suffix), nm)
        spec(s, &n, NAME("attn_norm.weight"), W_PLAIN, I_ONE, 1, &L->norm, 1, D, 0, 0);
        spec(s, &n, NAME("attn.q_proj.weight"), W_PACK, I_PROJ, (int)D, &L->q_proj, 2, KD, D, 0);
        spec(s, &n, NAME("attn.k_proj.weight"), W_PACK, I_PROJ, (int)D, &L->k_proj, 2, KK, D, 0);
        spec(s, &n, NAME("attn.v_proj.weight"), W_PACK, I_PROJ, (int)D, &L->v_proj, 2, VV, D, 0);
        if (c->gla_out_gate)
            spec(s, &n, NAME("attn.g_proj.weight"), W_PACK, I_PROJ, (int)D, &L->g_proj, 2, VD, D,
                 0);
        if (c->gla_short_conv) {
            static const char *const conv[3] = {"attn.q_conv1d.weight", "attn.k_conv1d.weight",
                                                "attn.v_conv1d.weight"};
            const int64_t width[3] = {KD, KK, VV};
            int64_t coff = 0;
            for (int j = 0; j < 3; j++) {
                spec(s, &n, NAME(conv[j]), W_CONV, I_CONV, (int)K, &L->conv_wt, 3, width[j], 1, K);
                s[n - 1].coff = (int)coff;
                coff += width[j];
            }
        }
        spec(s, &n, NAME("attn.gk_proj.0.weight"), W_PACK, I_PROJ, (int)D, &L->gk0, 2, R, D, 0);
        spec(s, &n, NAME("attn.gk_proj.1.weight"), W_PACK, I_PROJ, (int)R, &L->gk1, 2, KK, R, 0);
        spec(s, &n, NAME("attn.gk_proj.1.bias"), W_PLAIN, I_BIAS, 1, &L->gk1_b, 1, KK, 0, 0);
        spec(s, &n, NAME("attn.o_proj.weight"), W_PACK, I_PROJ, (int)VD, &L->out_proj, 2, D, VD,
             0);
        if (c->gla_affine) {
            spec(s, &n,
                 NAME(c->gla_fuse_norm && c->gla_out_gate ? "attn.g_norm_swish_gate.weight"
                                                          : "attn.g_norm.weight"),
                 W_TILE, I_ONE, 1, &L->gnorm, 1, c->gla_dv, 0, 0);
            s[n - 1].tile = c->nheads;
        }
        spec(s, &n, NAME("mlp_norm.weight"), W_PLAIN, I_ONE, 1, &L->mlp_norm, 1, D, 0, 0);
        spec(s, &n, NAME("mlp.gate_proj.weight"), W_PACK, I_PROJ, (int)D, &L->ff_gate, 2, FF, D,
             0);
        spec(s, &n, NAME("mlp.up_proj.weight"), W_PACK, I_PROJ, (int)D, &L->ff_up, 2, FF, D, 0);
        spec(s, &n, NAME("mlp.down_proj.weight"), W_PACK, I_PROJ, (int)FF, &L->ff_down, 2, D, FF,
             0);
#undef NAME
    }
    spec(s, &n, "model.norm.weight", W_PLAIN, I_ONE, 1, &m->norm_f, 1, D, 0, 0);
    if (!c->tie_embeddings)
        spec(s, &n, "lm_head.weight", W_PACK, I_PROJ, (int)D, &m->lm_head, 2, c->n_vocab, D, 0);
    return n;
}

static int weight_specs(struct model *m, struct wspec *s)
{
    const struct model_config *c = &m->cfg;
    if (c->arch == MODEL_GLA)
        return gla_specs(m, s);
    int n = 0;
    char nm[96];
    int64_t D = c->d_model, DI = c->d_inner, N = c->d_state;
    /* The embedding is packed like a projection (tied: it is the lm_head);
     * rows are gathered from the panels for the input lookup. */
    if (c->tie_embeddings)
        spec(s, &n, "backbone.embedding.weight", W_PACK, I_EMBED, 1, &m->lm_head, 2, c->n_vocab,
             D, 0);
    else
        spec(s, &n, "backbone.embedding.weight", W_PACK, I_EMBED, 1, &m->embed, 2, c->n_vocab,
             D, 0);
    for (int i = 0; i < c->n_layer; i++) {
        struct layer *L = &m->layers[i];
#define NAME(suffix) (snprintf(nm, sizeof nm, "backbone.layers.%d.%s", i, suffix), nm)
        spec(s, &n, NAME("norm.weight"), W_PLAIN, I_ONE, 1, &L->norm, 1, D, 0, 0);
        spec(s, &n, NAME("mixer.in_proj.weight"), W_PACK, I_PROJ, (int)D, &L->in_proj, 2,
             c->d_in_proj, D, 0);
        if (c->proj_bias)
            spec(s, &n, NAME("mixer.in_proj.bias"), W_PLAIN, I_BIAS, 1, &L->in_proj_b, 1,
                 c->d_in_proj, 0, 0);
        spec(s, &n, NAME("mixer.conv1d.weight"), W_CONV, I_CONV, c->d_conv, &L->conv_wt, 3,
             c->conv_dim, 1, c->d_conv);
        if (c->conv_bias)
            spec(s, &n, NAME("mixer.conv1d.bias"), W_PLAIN, I_BIAS, 1, &L->conv_b, 1,
                 c->conv_dim, 0, 0);
        if (c->arch == MODEL_MAMBA2) {
            spec(s, &n, NAME("mixer.dt_bias"), W_PLAIN, I_DTBIAS, 1, &L->dt_bias, 1, c->nheads,
                 0, 0);
            spec(s, &n, NAME("mixer.A_log"), W_NEG_EXP, I_ALOG, 1, &L->A, 1, c->nheads, 0, 0);
            spec(s, &n, NAME("mixer.D"), W_PLAIN, I_D, 1, &L->D, 1,
                 c->d_has_hdim ? DI : c->nheads, 0, 0);
            if (c->rmsnorm_gated)
                spec(s, &n, NAME("mixer.norm.weight"), W_PLAIN, I_ONE, 1, &L->gnorm, 1, DI, 0,
                     0);
        } else {
            spec(s, &n, NAME("mixer.x_proj.weight"), W_PACK, I_PROJ, (int)DI, &L->x_proj, 2,
                 c->dt_rank + 2 * N, DI, 0);
            spec(s, &n, NAME("mixer.dt_proj.weight"), W_PACK, I_PROJ, c->dt_rank, &L->dt_proj,
                 2, DI, c->dt_rank, 0);
            spec(s, &n, NAME("mixer.dt_proj.bias"), W_PLAIN, I_DTBIAS, 1, &L->dt_proj_b, 1, DI,
                 0, 0);
            spec(s, &n, NAME("mixer.A_log"), W_NEG_EXP, I_ALOG, 1, &L->A1, 2, DI, N, 0);
            spec(s, &n, NAME("mixer.D"), W_PLAIN, I_D, 1, &L->D, 1, DI, 0, 0);
        }
        spec(s, &n, NAME("mixer.out_proj.weight"), W_PACK, I_PROJ, (int)DI, &L->out_proj, 2, D,
             DI, 0);
        if (c->proj_bias)
            spec(s, &n, NAME("mixer.out_proj.bias"), W_PLAIN, I_BIAS, 1, &L->out_proj_b, 1, D, 0,
                 0);
#undef NAME
    }
    spec(s, &n, "backbone.norm_f.weight", W_PLAIN, I_ONE, 1, &m->norm_f, 1, D, 0, 0);
    if (!c->tie_embeddings)
        spec(s, &n, "lm_head.weight", W_PACK, I_PROJ, (int)D, &m->lm_head, 2, c->n_vocab, D, 0);
    return n;
}

static size_t spec_nelem(const struct wspec *w)
{
    size_t n = 1;
    for (int i = 0; i < w->ndim; i++)
        n *= (size_t)w->shape[i]; /* dims validated by model_config_complete */
    return n;
}

/* Bytes reserved in the arena for a weight: packed projections take
 * ceil(rows / GEMM_NR) panels of their format; the rest fp32. Every slot is
 * rounded up to 64 bytes. */
static size_t slot_of(const struct model *m, const struct wspec *w, int fmt)
{
    size_t b = w->kind == W_PACK
                   ? (size_t)(w->shape[0] + GEMM_NR - 1) / GEMM_NR *
                         wfmt_panel_bytes(fmt, (int)w->shape[1])
               : w->kind == W_CONV ? (w->coff ? 0
                                              : (size_t)m->cfg.d_conv * (size_t)m->cfg.conv_dim *
                                                    sizeof(float))
               : w->kind == W_TILE ? spec_nelem(w) * (size_t)w->tile * sizeof(float)
                                   : spec_nelem(w) * sizeof(float);
    return (b + 63) & ~(size_t)63;
}

/* A GLA k or v conv: it writes into the array its q conv (loaded just
 * before it) owns. */
static int conv_part(const struct wspec *w) { return w->kind == W_CONV && w->coff > 0; }

static void set_dst(const struct wspec *w, const void *p)
{
    if (w->kind == W_PACK)
        *(const void **)w->dst = p;
    else
        *(const float **)w->dst = p;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->nfiles; i++)
        st_close(m->files[i]);
    rc_free(m->files);
    rc_free(m->arena);
    rc_free(m->layers);
    rc_free(m);
}

static struct model *model_alloc(const struct model_config *cfg)
{
    struct model *m = rc_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = *cfg;
    m->layers = rc_calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers) {
        rc_free(m);
        return NULL;
    }
    return m;
}

/* Fill the derived form of w (not W_PACK: pack_rows) into dst from fp32
 * source src. */
static void derive(const struct model *m, const struct wspec *w, const float *src, float *dst)
{
    size_t n = spec_nelem(w);
    if (w->kind == W_CONV) {
        const int C = m->cfg.conv_dim, K = m->cfg.d_conv, W = (int)w->shape[0];
        for (int c = 0; c < W; c++)
            for (int k = 0; k < K; k++)
                dst[(size_t)k * C + w->coff + c] = src[(size_t)c * K + k];
    } else if (w->kind == W_TILE) {
        for (int t = 0; t < w->tile; t++)
            memcpy(dst + (size_t)t * n, src, n * sizeof *dst);
    } else if (w->kind == W_NEG_EXP) {
        for (size_t i = 0; i < n; i++)
            dst[i] = -expf(src[i]);
    } else if (dst != src) {
        memcpy(dst, src, n * sizeof *dst);
    }
}

/* Pack rows [r0, r0 + n) of projection w from src (those rows, fp32). */
static void pack_rows(const struct wspec *w, int fmt, const float *src, size_t r0, size_t n,
                      unsigned char *slot, int *lossy)
{
    wfmt_pack_rows(fmt, src, (size_t)w->shape[0], (size_t)w->shape[1], r0, n, slot, lossy);
}

void model_embed_row(const struct model *m, int32_t v, float *out)
{
    const int D = m->cfg.d_model, j = v % GEMM_NR, fmt = m->wfmt;
    const unsigned char *pan = (const unsigned char *)(m->embed ? m->embed : m->lm_head) +
                               (size_t)(v / GEMM_NR) * wfmt_panel_bytes(fmt, D);
    if (fmt == WF_F32) {
        for (int d = 0; d < D; d++)
            out[d] = ((const float *)pan)[(size_t)d * GEMM_NR + j];
    } else if (fmt == WF_BF16) {
        for (int d = 0; d < D; d++)
            out[d] = wfmt_bf16_value(((const uint16_t *)pan)[(size_t)d * GEMM_NR + j]);
    } else {
        for (int b0 = 0; b0 < D; b0 += GEMM_QB) {
            const unsigned char *blk = pan + (size_t)(b0 / GEMM_QB) * GEMM_Q8_BLOCK;
            uint16_t sc;
            memcpy(&sc, blk + 2 * j, 2);
            const float sv = wfmt_bf16_value(sc);
            const int8_t *q = (const int8_t *)(blk + GEMM_NR * 2);
            for (int d = b0; d < D && d < b0 + GEMM_QB; d++)
                out[d] = (float)q[(d - b0) * GEMM_NR + j] * sv;
        }
    }
}

/* The model identity: an XXH3-64 over the config fields that change the
 * function, then every weight (in spec order) by canonical name, shape and
 * fp32 value as stored, before any packing: fp_begin, then per weight
 * fp_head and its values (in pieces: XXH3 streams), then fp_finish. */
static void fp_begin(XXH3_state_t *st, const struct model_config *c)
{
    XXH3_64bits_reset(st);
    int32_t ints[] = {c->arch,     c->d_model,  c->n_layer, c->n_vocab,      c->d_inner,
                      c->d_state,  c->d_conv,   c->headdim, c->ngroups,      c->dt_rank,
                      c->conv_bias, c->proj_bias, c->rmsnorm_gated, c->norm_before_gate,
                      c->d_has_hdim, c->tie_embeddings};
    float floats[] = {c->norm_eps, c->dt_min, c->dt_max};
    XXH3_64bits_update(st, "recurd-model-v1", 15);
    XXH3_64bits_update(st, ints, sizeof ints);
    XXH3_64bits_update(st, floats, sizeof floats);
    if (c->arch == MODEL_GLA) { /* (Mamba identities stay what they were) */
        int32_t g[] = {c->nheads,        c->gla_kv_heads,  c->gla_key_dim, c->gla_ff,
                       c->gla_low_rank,  c->gla_short_conv, c->gla_out_gate, c->gla_affine,
                       c->gla_fuse_norm};
        float gf[] = {c->gla_gate_norm, c->gla_clamp_min};
        XXH3_64bits_update(st, "gla", 3);
        XXH3_64bits_update(st, g, sizeof g);
        XXH3_64bits_update(st, gf, sizeof gf);
    }
}

static void fp_head(XXH3_state_t *st, const struct wspec *w)
{
    XXH3_64bits_update(st, w->name, strlen(w->name) + 1);
    XXH3_64bits_update(st, w->shape, sizeof w->shape);
}

/* A format that changed any weight computes another function: it is part
 * of the identity. (bf16 of a bf16 checkpoint changes nothing.) */
static uint64_t fp_finish(XXH3_state_t *st, int fmt, int lossy)
{
    if (lossy) {
        const char *tag = fmt == WF_BF16 ? "weights-bf16" : "weights-q8-32";
        XXH3_64bits_update(st, tag, strlen(tag));
    }
    return XXH3_64bits_digest(st);
}

/* ------------------------------------------------------------ loading */

static int read_small_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return rc_fail(err, errlen, RC_EIO, "%s: %s", path, strerror(errno));
    char *buf = rc_malloc(MAX_CONFIG_BYTES + 1);
    if (!buf) {
        fclose(f);
        return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, MAX_CONFIG_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > MAX_CONFIG_BYTES) {
        rc_free(buf);
        return rc_fail(err, errlen, bad ? RC_EIO : RC_EFORMAT,
                       bad ? "%s: read error" : "%s: larger than %u bytes", path,
                       MAX_CONFIG_BYTES);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Shard names from model.safetensors.index.json: the distinct values of
 * weight_map, each a plain file name in the directory. */
static int open_shards(struct model *m, const char *dir, char *err, size_t errlen)
{
    char path[4096], *text = NULL;
    size_t len;
    int rc;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (file_exists(path)) {
        m->files = rc_calloc(1, sizeof *m->files);
        if (!m->files)
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        rc = st_open(path, &m->files[0], err, errlen);
        if (rc == 0)
            m->nfiles = 1;
        return rc;
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (!file_exists(path))
        return rc_fail(err, errlen, RC_EIO,
                       "%s: no model.safetensors or model.safetensors.index.json", dir);
    if ((rc = read_small_file(path, &text, &len, err, errlen)))
        return rc;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    rc_free(text);
    if (!root)
        return rc_fail(err, errlen, RC_EFORMAT, "%s: invalid JSON at line %d: %s", path, je.line,
                       je.text);
    json_t *map = json_object_get(root, "weight_map");
    const char *key;
    json_t *v;
    const char **names = NULL;
    int nn = 0;
    if (!json_is_object(map)) {
        rc = rc_fail(err, errlen, RC_EFORMAT, "%s: weight_map is missing or not an object", path);
        goto out;
    }
    names = rc_calloc(json_object_size(map) + 1, sizeof *names);
    if (!names) {
        rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        goto out;
    }
    json_object_foreach(map, key, v)
    {
        const char *fn = json_string_value(v);
        size_t fl = fn ? strlen(fn) : 0;
        if (!fn || fl < 13 || fl > 255 || strchr(fn, '/') || fn[0] == '.' ||
            strcmp(fn + fl - 12, ".safetensors")) {
            rc = rc_fail(err, errlen, RC_EFORMAT,
                         "%s: weight_map['%s'] is not a .safetensors file name in the directory",
                         path, key);
            goto out;
        }
        int seen = 0;
        for (int i = 0; i < nn && !seen; i++)
            seen = !strcmp(names[i], fn);
        if (!seen)
            names[nn++] = fn;
    }
    if (nn == 0 || nn > MAX_SHARDS) {
        rc = rc_fail(err, errlen, RC_EFORMAT, "%s: %d shards listed", path, nn);
        goto out;
    }
    m->files = rc_calloc((size_t)nn, sizeof *m->files);
    if (!m->files) {
        rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < nn; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if ((rc = st_open(path, &m->files[i], err, errlen)))
            goto out;
        m->nfiles++;
    }
    /* Every tensor the index maps must be in the shard it names. */
    json_object_foreach(map, key, v)
    {
        const char *fn = json_string_value(v);
        for (int i = 0; i < m->nfiles; i++) {
            const char *p = st_path(m->files[i]), *slash = strrchr(p, '/');
            if (!strcmp(slash ? slash + 1 : p, fn) && !st_find(m->files[i], key)) {
                rc = rc_fail(err, errlen, RC_EFORMAT,
                             "%s: index maps tensor '%s' to %s, which does not have it", path,
                             key, fn);
                goto out;
            }
        }
    }
out:
    rc_free(names);
    json_decref(root);
    return rc;
}

/* Look a tensor up in every shard; it must be in exactly one. */
static int find_tensor(const struct model *m, const char *name, const struct st_tensor **out,
                       char *err, size_t errlen)
{
    const struct st_tensor *hit = NULL;
    const char *hit_file = NULL;
    for (int i = 0; i < m->nfiles; i++) {
        const struct st_tensor *t = st_find(m->files[i], name);
        if (!t)
            continue;
        if (hit)
            return rc_fail(err, errlen, RC_EFORMAT, "tensor '%s' is in both %s and %s", name,
                           hit_file, st_path(m->files[i]));
        hit = t;
        hit_file = st_path(m->files[i]);
    }
    *out = hit;
    return 0;
}

static void shape_str(char *buf, size_t len, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

static const char *file_of(const struct model *m, const struct st_tensor *t)
{
    for (int i = 0; i < m->nfiles; i++)
        for (int j = 0; j < st_count(m->files[i]); j++)
            if (st_at(m->files[i], j) == t)
                return st_path(m->files[i]);
    return "?";
}

static int bind_specs(struct model *m, struct wspec *s, int ns, char *err, size_t errlen)
{
    int rc;
    for (int i = 0; i < ns; i++) {
        struct wspec *w = &s[i];
        if ((rc = find_tensor(m, w->name, &w->t, err, errlen)))
            return rc;
        if (m->cfg.arch == MODEL_GLA) {
            /* fla's names only */
        } else if (!w->t && i == 0) { /* the transformers name of the embedding */
            const struct st_tensor *t2 = NULL;
            if ((rc = find_tensor(m, "backbone.embeddings.weight", &t2, err, errlen)))
                return rc;
            w->t = t2;
        } else if (i == 0) {
            const struct st_tensor *t2 = NULL;
            if ((rc = find_tensor(m, "backbone.embeddings.weight", &t2, err, errlen)))
                return rc;
            if (t2)
                return rc_fail(err, errlen, RC_EFORMAT,
                               "both backbone.embedding.weight and backbone.embeddings.weight "
                               "present");
        }
        if (!w->t)
            return rc_fail(err, errlen, RC_EFORMAT, "%s: missing tensor '%s'",
                           st_path(m->files[0]), w->name);
        const struct st_tensor *t = w->t;
        int ok = t->ndim == w->ndim;
        for (int d = 0; ok && d < w->ndim; d++)
            ok = t->shape[d] == w->shape[d];
        if (!ok) {
            char have[96], want[96];
            shape_str(have, sizeof have, t->ndim, t->shape);
            shape_str(want, sizeof want, w->ndim, w->shape);
            return rc_fail(err, errlen, RC_EFORMAT,
                           "%s: tensor '%s' has shape %s but the config needs %s", file_of(m, t),
                           t->name, have, want);
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
            return rc_fail(err, errlen, RC_EUNSUPPORTED,
                           "%s: tensor '%s' has dtype %s (F32, F16 or BF16 supported)",
                           file_of(m, t), t->name, st_dtype_name(t->dtype));
    }
    /* Every tensor in the files must be one we use: a stray tensor means a
     * model this config does not describe (extra MLP weights, say). A tied
     * lm_head.weight that a writer stored anyway is tolerated. */
    for (int f = 0; f < m->nfiles; f++)
        for (int j = 0; j < st_count(m->files[f]); j++) {
            const struct st_tensor *t = st_at(m->files[f], j);
            int known = 0;
            for (int i = 0; i < ns && !known; i++)
                known = s[i].t == t;
            if (!known && !(m->cfg.tie_embeddings && !strcmp(t->name, "lm_head.weight")))
                return rc_fail(err, errlen, RC_EFORMAT,
                               "%s: unexpected tensor '%s' (not part of a %s model with this "
                               "config)",
                               st_path(m->files[f]), t->name,
                               model_arch_label(m->cfg.arch));
        }
    return 0;
}

/* WF_AUTO: bf16 when it changes no projection weight (every packed tensor
 * holds bf16 values: a BF16 file, or F32/F16 values with nothing in the low
 * 16 bits), else fp32. Reads the packed tensors once. */
static int choose_format(const struct wspec *s, int ns)
{
    for (int i = 0; i < ns; i++) {
        const struct st_tensor *t = s[i].t;
        if (s[i].kind != W_PACK || t->dtype == ST_BF16)
            continue;
        float buf[4096];
        for (size_t o = 0; o < t->nelem; o += 4096) {
            size_t n = t->nelem - o < 4096 ? t->nelem - o : 4096;
            st_to_f32_range(t, o, n, buf);
            for (size_t j = 0; j < n; j++) {
                uint32_t u;
                memcpy(&u, &buf[j], 4);
                if (u & 0xffffu)
                    return WF_F32;
            }
        }
    }
    return WF_BF16;
}

static int alloc_arena(struct model *m, const struct wspec *s, int ns, char *err, size_t errlen)
{
    size_t used = 0;
    for (int i = 0; i < ns; i++)
        used += slot_of(m, &s[i], m->wfmt);
    m->arena = rc_aligned_alloc(used ? used : 64);
    if (!m->arena)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory for %zu MiB of weights",
                       used >> 20);
    m->arena_bytes = used;
    return 0;
}

/* The shard that holds t. */
static struct st_file *shard_of(const struct model *m, const struct st_tensor *t)
{
    for (int i = 0; i < m->nfiles; i++)
        for (int j = 0; j < st_count(m->files[i]); j++)
            if (st_at(m->files[i], j) == t)
                return m->files[i];
    return NULL;
}

static int all_finite(const float *x, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(x[i]);
    return ok;
}

/* Convert every weight into its arena slot, tensor by tensor (projections
 * GEMM_NR rows at a time, packed into the model's format: no fp32 copy of a
 * large tensor is ever made), checking values and hashing them (as stored,
 * in fp32) for the fingerprint on the way. The file pages of a tensor are
 * dropped once it is converted, so the mapped file does not add to the
 * peak RSS. */
static int fill_specs(struct model *m, struct wspec *s, int ns, char *err, size_t errlen)
{
    XXH3_state_t fp;
    fp_begin(&fp, &m->cfg);
    size_t off = 0, tmp_n = 0;
    float *tmp = NULL;
    int lossy = 0, rc = 0;
    for (int i = 0; i < ns && !rc; i++) {
        struct wspec *w = &s[i];
        size_t n = spec_nelem(w), k = w->kind == W_PACK ? (size_t)w->shape[1] : n;
        size_t step = w->kind == W_PACK ? GEMM_NR * k : n;
        unsigned char *slot = conv_part(w) ? (unsigned char *)*(float **)w->dst : m->arena + off;
        off += slot_of(m, w, m->wfmt);
        if (step > tmp_n) {
            rc_free(tmp);
            if (!(tmp = rc_malloc(step * sizeof(float))))
                return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
            tmp_n = step;
        }
        fp_head(&fp, w);
        for (size_t o = 0; o < n && !rc; o += step) {
            size_t cnt = n - o < step ? n - o : step;
            float *dst = w->kind == W_PLAIN ? (float *)slot + o : tmp;
            st_to_f32_range(w->t, o, cnt, dst);
            if (!all_finite(dst, cnt)) {
                rc = rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s' holds NaN or Inf",
                             file_of(m, w->t), w->t->name);
                break;
            }
            XXH3_64bits_update(&fp, dst, cnt * sizeof(float));
            if (w->kind == W_PACK)
                pack_rows(w, m->wfmt, dst, o / k, cnt / k, slot, &lossy);
            else if (w->kind != W_PLAIN)
                derive(m, w, dst, (float *)slot);
        }
        set_dst(w, slot);
        st_release(shard_of(m, w->t), w->t);
    }
    rc_free(tmp);
    if (!rc)
        m->fingerprint = fp_finish(&fp, m->wfmt, lossy);
    return rc;
}

static void count_params(struct model *m, const struct wspec *s, int ns)
{
    m->n_params = m->n_params_embed = 0;
    for (int i = 0; i < ns; i++) {
        size_t n = spec_nelem(&s[i]);
        m->n_params += n;
        if (s[i].dst == &m->embed || s[i].dst == &m->lm_head)
            m->n_params_embed += n;
    }
}

int model_config_read(const char *path, struct model_config *cfg, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_small_file(path, &text, &len, err, errlen);
    if (rc)
        return rc;
    rc = config_parse(text, len, path, cfg, err, errlen);
    rc_free(text);
    return rc;
}

int model_load(const char *dir, struct model **out, char *err, size_t errlen)
{
    return model_load_as(dir, WF_F32, out, err, errlen);
}

int model_load_as(const char *dir, int wfmt, struct model **out, char *err, size_t errlen)
{
    char path[4096], *text = NULL;
    size_t len;
    struct model_config cfg;
    int rc;
    if (strlen(dir) > 3000)
        return rc_fail(err, errlen, RC_EINVAL, "model directory path too long");
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = read_small_file(path, &text, &len, err, errlen)))
        return rc;
    rc = config_parse(text, len, path, &cfg, err, errlen);
    rc_free(text);
    if (rc)
        return rc;
    struct model *m = model_alloc(&cfg);
    struct wspec *s = rc_calloc((size_t)max_specs(&cfg), sizeof *s);
    if (!m || !s) {
        model_free(m);
        rc_free(s);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    int ns = weight_specs(m, s);
    if ((rc = open_shards(m, dir, err, errlen)) || (rc = bind_specs(m, s, ns, err, errlen)) ||
        (m->wfmt = wfmt == MODEL_WEIGHTS_AUTO ? choose_format(s, ns) : wfmt, 0) ||
        (rc = alloc_arena(m, s, ns, err, errlen)) || (rc = fill_specs(m, s, ns, err, errlen))) {
        model_free(m);
        rc_free(s);
        return rc;
    }
    count_params(m, s, ns);
    rc_free(s);
    /* Every weight now lives in the arena: unmap the files. */
    for (int i = 0; i < m->nfiles; i++)
        st_close(m->files[i]);
    m->nfiles = 0;
    *out = m;
    return 0;
}

/* ------------------------------------------------------ random weights */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double unif(uint64_t *x) { return (double)(splitmix(x) >> 11) * 0x1.0p-53; }

static float init_value(int init, int fan_in, uint64_t *rng)
{
    double u = unif(rng);
    switch (init) {
    case I_PROJ: return (float)((2 * u - 1) * sqrt(3.0 / fan_in));
    case I_EMBED: return (float)((2 * u - 1) * 1.7);
    case I_ONE: return 1.0f;
    case I_CONV: return (float)((2 * u - 1) / sqrt((double)fan_in));
    case I_BIAS: return 0.0f;
    case I_ALOG: return (float)log(1 + 15 * u);
    case I_DTBIAS: { /* inverse softplus of dt log-uniform in [1e-3, 0.1] */
        double dt = exp(log(1e-3) + u * (log(0.1) - log(1e-3)));
        return (float)(dt + log(-expm1(-dt)));
    }
    case I_D: return 1.0f;
    }
    return 0.0f;
}

int model_create_random(const struct model_config *cfg_in, uint64_t seed, struct model **out,
                        char *err, size_t errlen)
{
    return model_create_random_as(cfg_in, seed, WF_F32, out, err, errlen);
}

int model_create_random_as(const struct model_config *cfg_in, uint64_t seed, int wfmt,
                           struct model **out, char *err, size_t errlen)
{
    struct model_config cfg = *cfg_in;
    int rc = model_config_complete(&cfg, err, errlen);
    if (rc)
        return rc;
    struct model *m = model_alloc(&cfg);
    struct wspec *s = rc_calloc((size_t)max_specs(&cfg), sizeof *s);
    float *src = NULL;
    if (!m || !s)
        goto nomem;
    m->wfmt = wfmt == MODEL_WEIGHTS_AUTO ? WF_F32 : wfmt; /* random values are not bf16 */
    int ns = weight_specs(m, s);
    size_t biggest = 0; /* floats generated at once: GEMM_NR rows of a projection */
    for (int i = 0; i < ns; i++) {
        size_t n = s[i].kind == W_PACK ? GEMM_NR * (size_t)s[i].shape[1] : spec_nelem(&s[i]);
        biggest = n > biggest ? n : biggest;
    }
    src = rc_malloc(biggest * sizeof(float));
    if (!src || alloc_arena(m, s, ns, err, errlen))
        goto nomem;
    XXH3_state_t fp;
    fp_begin(&fp, &cfg);
    size_t off = 0;
    uint64_t rng = seed;
    int lossy = 0;
    for (int i = 0; i < ns; i++) {
        const struct wspec *w = &s[i];
        size_t n = spec_nelem(w), k = w->kind == W_PACK ? (size_t)w->shape[1] : n;
        size_t step = w->kind == W_PACK ? GEMM_NR * k : n;
        unsigned char *dst = conv_part(w) ? (unsigned char *)*(float **)w->dst : m->arena + off;
        off += slot_of(m, w, m->wfmt);
        fp_head(&fp, w);
        for (size_t o = 0; o < n; o += step) { /* the same values, in order, a block at a time */
            size_t cnt = n - o < step ? n - o : step;
            for (size_t j = 0; j < cnt; j++)
                src[j] = init_value(w->init, w->fan_in, &rng);
            XXH3_64bits_update(&fp, src, cnt * sizeof(float));
            if (w->kind == W_PACK)
                pack_rows(w, m->wfmt, src, o / k, cnt / k, dst, &lossy);
            else
                derive(m, w, src, (float *)dst);
        }
        set_dst(w, dst);
    }
    m->fingerprint = fp_finish(&fp, m->wfmt, lossy);
    count_params(m, s, ns);
    rc_free(src);
    rc_free(s);
    *out = m;
    return 0;
nomem:
    rc_free(src);
    rc_free(s);
    model_free(m);
    return rc_fail(err, errlen, RC_ENOMEM, "out of memory for a random model");
}

/* ----------------------------------------------------------- accessors */

const char *model_arch_name(int arch)
{
    return arch == MODEL_MAMBA2 ? "mamba2" : arch == MODEL_MAMBA1 ? "mamba" : "gla";
}

const char *model_arch_label(int arch)
{
    return arch == MODEL_MAMBA2 ? "Mamba-2" : arch == MODEL_MAMBA1 ? "Mamba-1" : "GLA";
}

const struct model_config *model_config(const struct model *m) { return &m->cfg; }
uint64_t model_fingerprint(const struct model *m) { return m->fingerprint; }
size_t model_n_params(const struct model *m) { return m->n_params; }
size_t model_n_params_nonembed(const struct model *m) { return m->n_params - m->n_params_embed; }

size_t model_weight_bytes(const struct model *m) { return m->arena_bytes; }
int model_weights(const struct model *m) { return m->wfmt; }

const char *model_weights_name(int wfmt)
{
    switch (wfmt) {
    case WF_F32: return "fp32";
    case WF_BF16: return "bf16";
    case WF_Q8: return "int8";
    case MODEL_WEIGHTS_AUTO: return "auto";
    }
    return "?";
}

int model_weights_parse(const char *name)
{
    static const int all[] = {WF_F32, WF_BF16, WF_Q8, MODEL_WEIGHTS_AUTO};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, model_weights_name(all[i])))
            return all[i];
    return -2;
}

double model_flops_per_token(const struct model *m, int with_lm_head)
{
    const struct model_config *c = &m->cfg;
    double D = c->d_model, DI = c->d_inner, N = c->d_state, per_layer;
    if (c->arch == MODEL_GLA) {
        const double KD = c->gla_key_dim, dv = c->gla_dv;
        per_layer = 2.0 * D * c->d_in_proj - 2.0 * D * (KD / (c->nheads / c->gla_kv_heads)) +
                    2.0 * c->gla_low_rank * (KD / (c->nheads / c->gla_kv_heads)) /* gk_proj.1 */
                    + 2.0 * DI * D + 6.0 * D * c->gla_ff                    /* o_proj, MLP */
                    + 2.0 * c->conv_dim * c->d_conv                         /* short conv */
                    + 4.0 * KD * dv                                         /* q.S, S update */
                    + 10.0 * DI + 4.0 * c->gla_ff;                          /* norms, gates */
    } else if (c->arch == MODEL_MAMBA2) {
        per_layer = 2.0 * D * c->d_in_proj + 2.0 * DI * D  /* in_proj, out_proj */
                    + 2.0 * c->conv_dim * c->d_conv        /* conv */
                    + 3.0 * DI * N                         /* state update (mul, fma) + C dot */
                    + 10.0 * DI;                           /* gating, norms */
    } else {
        per_layer = 2.0 * D * c->d_in_proj + 2.0 * DI * D + 2.0 * DI * (c->dt_rank + 2 * N) +
                    2.0 * c->dt_rank * DI + 2.0 * DI * c->d_conv + 4.0 * DI * N + 10.0 * DI;
    }
    return c->n_layer * per_layer + (with_lm_head ? 2.0 * D * c->n_vocab : 0.0);
}
