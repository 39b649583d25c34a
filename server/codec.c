#include "codec.h"

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "tokenizer.h"

struct codec {
    tokenizer_t *tok;
    int fallback;      /* byte-level: no tokenizer.json */
};

struct codec_enc {
    tok_encoder_t *e;
    int finished;
};

int idvec_push(struct idvec *iv, int32_t id)
{
    if (iv->n == iv->cap) {
        size_t nc = iv->cap ? iv->cap * 2 : 256;
        int32_t *nv = rc_realloc(iv->v, nc * sizeof *nv);
        if (!nv)
            return RC_ENOMEM;
        iv->v = nv;
        iv->cap = nc;
    }
    iv->v[iv->n++] = id;
    return 0;
}

static int idvec_append(struct idvec *iv, const int32_t *ids, size_t n)
{
    if (iv->n + n > iv->cap) {
        size_t nc = iv->cap ? iv->cap : 256;
        while (nc < iv->n + n)
            nc *= 2;
        int32_t *nv = rc_realloc(iv->v, nc * sizeof *nv);
        if (!nv)
            return RC_ENOMEM;
        iv->v = nv;
        iv->cap = nc;
    }
    if (n)
        memcpy(iv->v + iv->n, ids, n * sizeof *ids);
    iv->n += n;
    return 0;
}

void idvec_free(struct idvec *iv)
{
    rc_free(iv->v);
    memset(iv, 0, sizeof *iv);
}

int codec_load(const char *model_dir, int vocab_size, int n_rows, struct codec **out,
               char *err, size_t errlen)
{
    struct codec *c = rc_calloc(1, sizeof *c);
    if (!c)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    char e[384];
    int rc = tokenizer_load_dir(model_dir, &c->tok, &c->fallback, e, sizeof e);
    if (rc) {
        rc_free(c);
        return rc_fail(err, errlen, rc, "%s/tokenizer.json: %s", model_dir, e);
    }
    int32_t ids = tokenizer_vocab_size(c->tok);
    if (c->fallback && vocab_size < 256) {
        codec_free(c);
        return rc_fail(err, errlen, RC_EUNSUPPORTED,
                       "%s: no tokenizer.json, and the byte-level fallback needs a vocabulary "
                       "of at least 256 ids (the model has %d)", model_dir, vocab_size);
    }
    if (ids > n_rows) {
        /* an id the tokenizer can produce would have no embedding row */
        codec_free(c);
        return rc_fail(err, errlen, RC_EMISMATCH,
                       "%s/tokenizer.json has %d ids, the model only %d embedding rows",
                       model_dir, (int)ids, n_rows);
    }
    *out = c;
    return 0;
}

void codec_free(struct codec *c)
{
    if (!c)
        return;
    tokenizer_free(c->tok);
    rc_free(c);
}

const char *codec_kind(const struct codec *c) { return c->fallback ? "byte" : "bpe"; }

const char *codec_describe(const struct codec *c) { return tokenizer_describe(c->tok); }

int32_t codec_eos(const struct codec *c) { return tokenizer_eos_id(c->tok); }

int32_t codec_bos(const struct codec *c) { return tokenizer_bos_id(c->tok); }

const char *codec_piece(const struct codec *c, int32_t id, size_t *len)
{
    const char *b;
    if (tokenizer_token_bytes(c->tok, id, &b, len) != 0) {
        *len = 0; /* a model row the tokenizer has no token for */
        return "";
    }
    return b;
}

int codec_encode(const struct codec *c, const char *text, size_t len, struct idvec *out)
{
    int32_t *ids;
    size_t n;
    int rc = tokenizer_encode(c->tok, text, len, 0, &ids, &n, NULL, 0);
    if (rc)
        return rc;
    rc = idvec_append(out, ids, n);
    rc_free(ids);
    return rc;
}

int codec_enc_create(const struct codec *c, struct codec_enc **out)
{
    struct codec_enc *e = rc_calloc(1, sizeof *e);
    if (!e)
        return RC_ENOMEM;
    int rc = tok_encoder_create(c->tok, NULL, &e->e, NULL, 0);
    if (rc) {
        rc_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void codec_enc_free(struct codec_enc *e)
{
    if (!e)
        return;
    tok_encoder_free(e->e);
    rc_free(e);
}

int codec_enc_feed(struct codec_enc *e, const char *bytes, size_t n, int final,
                   struct idvec *out)
{
    int rc = 0;
    if (n)
        rc = tok_encoder_feed(e->e, bytes, n, NULL, 0);
    if (!rc && final && !e->finished) {
        rc = tok_encoder_finish(e->e, NULL, 0);
        e->finished = 1;
    }
    if (rc)
        return rc;
    size_t k;
    const int32_t *ids = tok_encoder_ids(e->e, &k);
    if ((rc = idvec_append(out, ids, k)) != 0)
        return rc;
    tok_encoder_take(e->e, k);
    return 0;
}

size_t codec_enc_pending(const struct codec_enc *e) { return tok_encoder_pending_bytes(e->e); }
