#include "codec.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "errors.h"

struct codec {
    int kind_bpe;
    int vocab_size;
    char bytes[256]; /* byte-level: piece of id b is bytes[b] */
};

struct codec_enc {
    const struct codec *c;
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

void idvec_free(struct idvec *iv)
{
    rc_free(iv->v);
    memset(iv, 0, sizeof *iv);
}

int codec_load(const char *model_dir, int vocab_size, struct codec **out, char *err,
               size_t errlen)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    if (stat(path, &st) == 0)
        return rc_fail(err, errlen, RC_EUNSUPPORTED,
                       "%s: tokenizer.json support needs core/tokenizer (not merged yet)", path);
    if (vocab_size < 256)
        return rc_fail(err, errlen, RC_EUNSUPPORTED,
                       "%s: no tokenizer.json, and the byte-level fallback needs a vocabulary "
                       "of at least 256 ids (the model has %d)", model_dir, vocab_size);
    struct codec *c = rc_calloc(1, sizeof *c);
    if (!c)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    c->vocab_size = vocab_size;
    for (int i = 0; i < 256; i++)
        c->bytes[i] = (char)i;
    *out = c;
    return 0;
}

void codec_free(struct codec *c) { rc_free(c); }

const char *codec_kind(const struct codec *c) { return c->kind_bpe ? "bpe" : "byte"; }

int32_t codec_eos(const struct codec *c) { return -1; }

const char *codec_piece(const struct codec *c, int32_t id, size_t *len)
{
    if (id >= 0 && id < 256) {
        *len = 1;
        return &c->bytes[id];
    }
    *len = 0; /* ids past the byte range have no text in the fallback */
    return "";
}

int codec_encode(const struct codec *c, const char *text, size_t len, struct idvec *out)
{
    for (size_t i = 0; i < len; i++)
        if (idvec_push(out, (unsigned char)text[i]) != 0)
            return RC_ENOMEM;
    return 0;
}

int codec_enc_create(const struct codec *c, struct codec_enc **out)
{
    struct codec_enc *e = rc_calloc(1, sizeof *e);
    if (!e)
        return RC_ENOMEM;
    e->c = c;
    *out = e;
    return 0;
}

void codec_enc_free(struct codec_enc *e) { rc_free(e); }

int codec_enc_feed(struct codec_enc *e, const char *bytes, size_t n, int final,
                   struct idvec *out)
{
    return codec_encode(e->c, bytes, n, out);
}
