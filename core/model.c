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
    W_CONV,    /* (conv_dim, 1, d_conv) -> tap-major (d_conv, conv_dim) */
    W_NEG_EXP, /* A_log -> A = -exp(A_log) */
};

enum winit { I_PROJ, I_EMBED, I_ONE, I_CONV, I_BIAS, I_ALOG, I_DTBIAS, I_D };

struct wspec {
    char name[96];
    int ndim;
    int64_t shape[3];
    int kind;
    int init;
    int fan_in;
    const float **dst;
    /* filled while loading */
    const struct st_tensor *t;
};

/* Append one spec. */
static void spec(struct wspec *s, int *n, const char *name, int kind, int init, int fan_in,
                 const float **dst, int ndim, int64_t d0, int64_t d1, int64_t d2)
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

static int max_specs(const struct model_config *c) { return 4 + c->n_layer * 14; }

static int weight_specs(struct model *m, struct wspec *s)
{
    const struct model_config *c = &m->cfg;
    int n = 0;
    char nm[96];
    int64_t D = c->d_model, DI = c->d_inner, N = c->d_state;
    /* Tied: the embedding is the lm_head, stored packed; rows are gathered
     * from the panels for the input lookup. Untied: plain rows. */
    if (c->tie_embeddings)
        spec(s, &n, "backbone.embedding.weight", W_PACK, I_EMBED, 1, &m->lm_head, 2, c->n_vocab,
             D, 0);
    else
        spec(s, &n, "backbone.embedding.weight", W_PLAIN, I_EMBED, 1, &m->embed, 2, c->n_vocab,
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

/* Floats reserved in the arena for a weight: packed projections have their
 * rows padded to a multiple of GEMM_NR; every slot is rounded up to 16
 * floats (64 bytes). */
static size_t slot_of(const struct wspec *w)
{
    size_t n = 1;
    for (int i = 0; i < w->ndim; i++)
        n *= (size_t)(i == 0 && w->kind == W_PACK ? (w->shape[0] + GEMM_NR - 1) / GEMM_NR * GEMM_NR
                                                  : w->shape[i]);
    return (n + 15) & ~(size_t)15;
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

/* Fill the derived form of w into dst from fp32 source src. */
static void derive(const struct model *m, const struct wspec *w, const float *src, float *dst)
{
    size_t n = spec_nelem(w);
    if (w->kind == W_CONV) {
        int C = m->cfg.conv_dim, K = m->cfg.d_conv;
        for (int c = 0; c < C; c++)
            for (int k = 0; k < K; k++)
                dst[(size_t)k * C + c] = src[(size_t)c * K + k];
    } else if (w->kind == W_PACK) {
        size_t rows = (size_t)w->shape[0], k = (size_t)w->shape[1];
        size_t panels = (rows + GEMM_NR - 1) / GEMM_NR;
        for (size_t p = 0; p < panels; p++)
            for (size_t kk = 0; kk < k; kk++)
                for (size_t j = 0; j < GEMM_NR; j++) {
                    size_t r = p * GEMM_NR + j;
                    dst[(p * k + kk) * GEMM_NR + j] = r < rows ? src[r * k + kk] : 0.0f;
                }
    } else if (w->kind == W_NEG_EXP) {
        for (size_t i = 0; i < n; i++)
            dst[i] = -expf(src[i]);
    } else if (dst != src) {
        memcpy(dst, src, n * sizeof *dst);
    }
}

/* The model identity: an XXH3-64 over the config fields that change the
 * function, then every weight (in spec order) by canonical name, shape and
 * fp32 value as stored, before any packing. fp_begin, fp_add per weight,
 * XXH3_64bits_digest. */
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
}

static void fp_add(XXH3_state_t *st, const struct wspec *w, const float *values)
{
    XXH3_64bits_update(st, w->name, strlen(w->name) + 1);
    XXH3_64bits_update(st, w->shape, sizeof w->shape);
    XXH3_64bits_update(st, values, spec_nelem(w) * sizeof(float));
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
    size_t used = 0;
    int rc;
    for (int i = 0; i < ns; i++) {
        struct wspec *w = &s[i];
        if ((rc = find_tensor(m, w->name, &w->t, err, errlen)))
            return rc;
        if (!w->t && i == 0) { /* the transformers name of the embedding */
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
        used += slot_of(w);
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
                               m->cfg.arch == MODEL_MAMBA2 ? "Mamba-2" : "Mamba-1");
        }
    m->arena = rc_aligned_alloc((used ? used : 1) * sizeof(float));
    if (!m->arena)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory for %zu MiB of weights",
                       used * 4 >> 20);
    return 0;
}

static int all_finite(const float *x, size_t n)
{
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= isfinite(x[i]);
    return ok;
}

/* Point or convert every weight; compute derived ones; fingerprint. The
 * fingerprint hashes the values as stored (converted to fp32), so derived
 * weights keep a temporary copy of their source until it is hashed. */
/* Convert every weight to fp32 into its arena slot (packing projections),
 * checking values and hashing them for the fingerprint on the way. */
static int fill_specs(struct model *m, struct wspec *s, int ns, char *err, size_t errlen)
{
    XXH3_state_t fp;
    fp_begin(&fp, &m->cfg);
    size_t off = 0;
    for (int i = 0; i < ns; i++) {
        struct wspec *w = &s[i];
        size_t n = spec_nelem(w);
        float *slotp = m->arena + off, *stored = slotp;
        off += slot_of(w);
        if (w->kind != W_PLAIN && !(stored = rc_malloc(n * sizeof(float))))
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        st_to_f32(w->t, stored);
        int finite = all_finite(stored, n);
        if (finite) {
            fp_add(&fp, w, stored);
            derive(m, w, stored, slotp);
            *w->dst = slotp;
        }
        if (stored != slotp)
            rc_free(stored);
        if (!finite)
            return rc_fail(err, errlen, RC_EFORMAT, "%s: tensor '%s' holds NaN or Inf",
                           file_of(m, w->t), w->t->name);
    }
    m->fingerprint = XXH3_64bits_digest(&fp);
    return 0;
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
        (rc = fill_specs(m, s, ns, err, errlen))) {
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
    struct model_config cfg = *cfg_in;
    int rc = model_config_complete(&cfg, err, errlen);
    if (rc)
        return rc;
    struct model *m = model_alloc(&cfg);
    struct wspec *s = rc_calloc((size_t)max_specs(&cfg), sizeof *s);
    float *src = NULL;
    if (!m || !s)
        goto nomem;
    int ns = weight_specs(m, s);
    size_t total = 0, biggest = 0;
    for (int i = 0; i < ns; i++) {
        total += slot_of(&s[i]);
        biggest = spec_nelem(&s[i]) > biggest ? spec_nelem(&s[i]) : biggest;
    }
    m->arena = rc_aligned_alloc(total * sizeof(float));
    src = rc_malloc(biggest * sizeof(float));
    if (!m->arena || !src)
        goto nomem;
    XXH3_state_t fp;
    fp_begin(&fp, &cfg);
    size_t off = 0;
    uint64_t rng = seed;
    for (int i = 0; i < ns; i++) {
        size_t n = spec_nelem(&s[i]);
        float *dst = m->arena + off;
        off += slot_of(&s[i]);
        for (size_t j = 0; j < n; j++)
            src[j] = init_value(s[i].init, s[i].fan_in, &rng);
        fp_add(&fp, &s[i], src);
        derive(m, &s[i], src, dst);
        *s[i].dst = dst;
    }
    m->fingerprint = XXH3_64bits_digest(&fp);
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

const struct model_config *model_config(const struct model *m) { return &m->cfg; }
uint64_t model_fingerprint(const struct model *m) { return m->fingerprint; }
size_t model_n_params(const struct model *m) { return m->n_params; }
size_t model_n_params_nonembed(const struct model *m) { return m->n_params - m->n_params_embed; }

size_t model_weight_bytes(const struct model *m)
{
    size_t b = m->n_params * sizeof(float);
    return b;
}

double model_flops_per_token(const struct model *m, int with_lm_head)
{
    const struct model_config *c = &m->cfg;
    double D = c->d_model, DI = c->d_inner, N = c->d_state, per_layer;
    if (c->arch == MODEL_MAMBA2) {
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
