#include "state.h"

#include <math.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "model_impl.h"

#define LAYOUT_VERSION 1
#define HEADER_BYTES (8 * 4 + 8)

static size_t ssm_per_layer(const struct model_config *c)
{
    if (c->arch == MODEL_GLA) /* one dk x dv matrix per key/value head */
        return (size_t)c->gla_kv_heads * c->gla_dk * c->gla_dv;
    return c->arch == MODEL_MAMBA2 ? (size_t)c->nheads * c->headdim * c->d_state
                                   : (size_t)c->d_inner * c->d_state;
}

static size_t conv_per_layer(const struct model_config *c)
{
    return (size_t)(c->d_conv - 1) * c->conv_dim;
}

/* Floats in the state block: last + conv + ssm. */
static size_t state_floats(const struct model_config *c)
{
    return (size_t)c->d_model + (size_t)c->n_layer * (conv_per_layer(c) + ssm_per_layer(c));
}

size_t state_bytes(const struct model *m) { return state_floats(&m->cfg) * sizeof(float); }

size_t state_serialized_bytes(const struct model *m) { return HEADER_BYTES + state_bytes(m); }

int state_create(const struct model *m, struct mstate **out)
{
    const struct model_config *c = &m->cfg;
    struct mstate *s = rc_calloc(1, sizeof *s);
    if (!s)
        return RC_ENOMEM;
    s->block = rc_aligned_alloc(state_bytes(m));
    if (!s->block) {
        rc_free(s);
        return RC_ENOMEM;
    }
    s->model = m;
    s->conv_per_layer = conv_per_layer(c);
    s->ssm_per_layer = ssm_per_layer(c);
    s->last = s->block;
    s->conv = s->last + c->d_model;
    s->ssm = s->conv + (size_t)c->n_layer * s->conv_per_layer;
    state_reset(s);
    *out = s;
    return 0;
}

void state_free(struct mstate *s)
{
    if (!s)
        return;
    rc_free(s->block);
    rc_free(s);
}

void state_reset(struct mstate *s)
{
    memset(s->block, 0, state_bytes(s->model));
    s->pos = 0;
    s->has_last = 0;
}

int state_copy(struct mstate *dst, const struct mstate *src)
{
    if (dst->model != src->model)
        return RC_EMISMATCH;
    if (dst != src) {
        memcpy(dst->block, src->block, state_bytes(src->model));
        dst->pos = src->pos;
        dst->has_last = src->has_last;
    }
    return 0;
}

static void put_u32(uint8_t **p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        *(*p)++ = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t **p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)(*(*p)++) << (8 * i);
    return v;
}

/* The fixed header fields, in order. */
static void header_fields(const struct model *m, uint32_t f[8])
{
    const struct model_config *c = &m->cfg;
    f[0] = LAYOUT_VERSION;
    f[1] = (uint32_t)c->arch;
    f[2] = (uint32_t)c->n_layer;
    f[3] = (uint32_t)c->d_model;
    f[4] = (uint32_t)c->conv_dim;
    f[5] = (uint32_t)c->d_conv;
    f[6] = (uint32_t)ssm_per_layer(c);
    f[7] = 0; /* has_last, filled by the caller */
}

int state_serialize(const struct mstate *s, void *buf, size_t len)
{
    if (len < state_serialized_bytes(s->model))
        return RC_ERANGE;
    uint32_t f[8];
    header_fields(s->model, f);
    f[7] = (uint32_t)s->has_last;
    uint8_t *p = buf;
    for (int i = 0; i < 8; i++)
        put_u32(&p, f[i]);
    uint64_t pos = (uint64_t)s->pos;
    for (int i = 0; i < 8; i++)
        *p++ = (uint8_t)(pos >> (8 * i));
    /* fp32 little-endian: this build only runs on little-endian hosts. */
    memcpy(p, s->block, state_bytes(s->model));
    return 0;
}

int64_t state_serialized_pos(const void *prefix)
{
    const uint8_t *p = (const uint8_t *)prefix + 8 * sizeof(uint32_t); /* after the u32 fields */
    uint64_t pos = 0;
    for (int i = 0; i < 8; i++)
        pos |= (uint64_t)p[i] << (8 * i);
    return (int64_t)pos;
}

int state_check_floats(const struct model *m, const void *block, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    /* The three parts, named so a refusal says which one lies. */
    const size_t nlast = (size_t)c->d_model;
    const size_t nconv = (size_t)c->n_layer * conv_per_layer(c);
    const size_t n = state_floats(c);
    for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, (const uint8_t *)block + i * sizeof v, sizeof v); /* any alignment */
        float lim = i < nlast + nconv ? STATE_MAX_ACT : STATE_MAX_SSM;
        if (isfinite(v) && fabsf(v) <= lim)
            continue;
        const char *part = i < nlast ? "last" : i < nlast + nconv ? "conv" : "ssm";
        size_t at = i < nlast ? i : i < nlast + nconv ? i - nlast : i - nlast - nconv;
        if (!isfinite(v))
            return rc_fail(err, errlen, RC_EFORMAT, "state float %s[%zu] is not finite", part,
                           at);
        return rc_fail(err, errlen, RC_EFORMAT,
                       "state float %s[%zu] is %g, outside [-%g, %g] (no real stream reaches it)",
                       part, at, (double)v, (double)lim, (double)lim);
    }
    return 0;
}

int state_deserialize(struct mstate *s, const void *buf, size_t len, char *err, size_t errlen)
{
    const struct model *m = s->model;
    if (len != state_serialized_bytes(m))
        return rc_fail(err, errlen, len < HEADER_BYTES ? RC_EFORMAT : RC_EMISMATCH,
                       "state is %zu bytes, this model's is %zu", len, state_serialized_bytes(m));
    uint32_t want[8], have[8];
    header_fields(m, want);
    const uint8_t *p = buf;
    for (int i = 0; i < 8; i++)
        have[i] = get_u32(&p);
    if (have[0] != LAYOUT_VERSION)
        return rc_fail(err, errlen, RC_EUNSUPPORTED, "state layout version %u (this build: %u)",
                       have[0], LAYOUT_VERSION);
    static const char *names[] = {"version", "arch", "n_layer", "d_model", "conv_dim", "d_conv",
                                  "ssm size"};
    for (int i = 1; i < 7; i++)
        if (have[i] != want[i])
            return rc_fail(err, errlen, RC_EMISMATCH, "state %s %u, this model's is %u",
                           names[i], have[i], want[i]);
    if (have[7] > 1)
        return rc_fail(err, errlen, RC_EFORMAT, "state has_last flag %u", have[7]);
    uint64_t pos = 0;
    for (int i = 0; i < 8; i++)
        pos |= (uint64_t)(*p++) << (8 * i);
    if (pos == 0 && have[7])
        return rc_fail(err, errlen, RC_EFORMAT, "state position 0 with a last row");
    if (pos > STATE_MAX_POS)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "state position %llu is past the maximum position 2^53 (%llu)",
                       (unsigned long long)pos, (unsigned long long)STATE_MAX_POS);
    int rc = state_check_floats(m, p, err, errlen);
    if (rc)
        return rc;
    size_t n = state_floats(&m->cfg);
    memcpy(s->block, p, n * sizeof(float));
    s->pos = (int64_t)pos;
    s->has_last = (int)have[7];
    return 0;
}
