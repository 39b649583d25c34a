#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "tools.h"
#include "errors.h"
#include "model.h"
#include "tokenizer.h"

double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int read_file_all(const char *path, size_t max_bytes, char **out, size_t *len, char *err,
                  size_t errlen)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return rc_fail(err, errlen, RC_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = rc_malloc(cap + 1);
    if (!buf)
        goto nomem;
    for (;;) {
        if (n == cap) {
            if (cap >= max_bytes) {
                rc_free(buf);
                if (f != stdin)
                    fclose(f);
                return rc_fail(err, errlen, RC_ERANGE, "%s: larger than %zu bytes", path,
                               max_bytes);
            }
            size_t ncap = cap * 2 > max_bytes ? max_bytes : cap * 2;
            char *nb = rc_realloc(buf, ncap + 1);
            if (!nb)
                goto nomem;
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                rc_free(buf);
                if (f != stdin)
                    fclose(f);
                return rc_fail(err, errlen, RC_EIO, "%s: read error", path);
            }
            break;
        }
    }
    if (f != stdin)
        fclose(f);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
nomem:
    rc_free(buf);
    if (f != stdin)
        fclose(f);
    return rc_fail(err, errlen, RC_ENOMEM, "%s: out of memory", path);
}

int next_int_word(const char **p, long long *val, const char **word, size_t *wlen)
{
    const char *q = *p;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
        q++;
    if (!*q) {
        *p = q;
        return 0;
    }
    const char *start = q;
    while (*q && *q != ' ' && *q != '\t' && *q != '\n' && *q != '\r')
        q++;
    char tok[32];
    size_t tl = (size_t)(q - start);
    int ok = tl > 0 && tl < sizeof tok;
    if (ok) {
        memcpy(tok, start, tl);
        tok[tl] = 0;
        char *end;
        errno = 0;
        *val = strtoll(tok, &end, 10);
        ok = errno == 0 && *end == 0 && tok[0] != '+' && !(tok[0] == '-' && tok[1] == 0);
    }
    *p = q;
    *word = start;
    *wlen = tl;
    return ok ? 1 : -1;
}

int parse_token_ids(const char *text, int n_vocab, int32_t **ids, size_t *n, char *err,
                    size_t errlen)
{
    size_t cap = 1024, cnt = 0;
    int32_t *v = rc_malloc(cap * sizeof *v);
    if (!v)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    const char *p = text, *w;
    size_t wl;
    long long val;
    int r;
    while ((r = next_int_word(&p, &val, &w, &wl)) != 0) {
        if (r < 0 || val < 0 || val >= n_vocab) {
            rc_free(v);
            return rc_fail(err, errlen, RC_EINVAL,
                           "token %zu ('%.*s') is not an id in [0, %d)", cnt,
                           (int)(wl > 24 ? 24 : wl), w, n_vocab);
        }
        if (cnt == cap) {
            int32_t *nv = rc_realloc(v, 2 * cap * sizeof *v);
            if (!nv) {
                rc_free(v);
                return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
            }
            v = nv;
            cap *= 2;
        }
        v[cnt++] = (int32_t)val;
    }
    *ids = v;
    *n = cnt;
    return 0;
}

int parse_long_opt(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

#define MAX_INPUT_BYTES ((size_t)1 << 32)

int load_input_ids(const char *model_dir, int n_vocab, const char *tokens_path,
                   const char *text_path, int32_t **ids, size_t *n, char *err, size_t errlen)
{
    char *text = NULL, e2[768];
    size_t len;
    int rc;
    if (tokens_path) {
        if ((rc = read_file_all(tokens_path, MAX_INPUT_BYTES, &text, &len, e2, sizeof e2)) ||
            (rc = parse_token_ids(text, n_vocab, ids, n, e2, sizeof e2)))
            rc_fail(err, errlen, rc, "%s: %s", tokens_path, e2);
        rc_free(text);
        return rc;
    }
    tokenizer_t *tok = NULL;
    int fallback = 0;
    if ((rc = tokenizer_load_dir(model_dir, &tok, &fallback, err, errlen)))
        return rc;
    if ((rc = read_file_all(text_path, MAX_INPUT_BYTES, &text, &len, err, errlen)) == 0)
        rc = tokenizer_encode(tok, text, len, 0, ids, n, err, errlen);
    /* A Llama-style tokenizer puts its BOS first (the reference's encode()
     * does; the server does at a stream's position 0). */
    int32_t bos = tokenizer_bos_id(tok);
    if (rc == 0 && bos >= 0) {
        int32_t *w = rc_malloc((*n + 1) * sizeof *w);
        if (!w) {
            rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        } else {
            w[0] = bos;
            if (*n)
                memcpy(w + 1, *ids, *n * sizeof *w);
            rc_free(*ids);
            *ids = w;
            (*n)++;
        }
    }
    rc_free(text);
    tokenizer_free(tok);
    if (rc)
        return rc;
    for (size_t i = 0; i < *n; i++)
        if ((*ids)[i] >= n_vocab) {
            int32_t bad = (*ids)[i];
            rc_free(*ids);
            *ids = NULL;
            return rc_fail(err, errlen, RC_EINVAL,
                           "%s: the tokenizer gave id %d (token %zu), beyond the model's %d rows",
                           text_path, bad, i, n_vocab);
        }
    return 0;
}

int open_model(const struct model_source *src, uint64_t seed, struct model **m, char *err,
               size_t errlen)
{
    *m = NULL;
    if (src->dir)
        return model_load_as(src->dir, src->weights, m, err, errlen);
    struct model_config cfg;
    int rc;
    if (src->random_name) {
        if ((rc = model_config_named(src->random_name, &cfg)))
            return rc_fail(err, errlen, rc,
                           "unknown shape '%s' (mamba2-130m, mamba2-370m, mamba-130m)",
                           src->random_name);
    } else if ((rc = model_config_read(src->config_path, &cfg, err, errlen))) {
        return rc;
    }
    return model_create_random_as(&cfg, seed, src->weights, m, err, errlen);
}

int parse_weights_opt(const char *tool, const char *name, int *weights)
{
    int w = model_weights_parse(name);
    if (w == -2) {
        fprintf(stderr, "recurd %s: --weights must be auto, fp32, bf16 or int8 (not '%s')\n",
                tool, name);
        return -1;
    }
    *weights = w;
    return 0;
}

int open_model_and_input(const char *dir, int weights, const char *tokens_path,
                         const char *text_path, struct model **m, int32_t **ids, size_t *n,
                         char *err, size_t errlen)
{
    int rc = model_load_as(dir, weights, m, err, errlen);
    if (rc)
        return rc;
    rc = load_input_ids(dir, model_config(*m)->n_vocab, tokens_path, text_path, ids, n, err,
                        errlen);
    if (rc) {
        model_free(*m);
        *m = NULL;
    }
    return rc;
}

int32_t random_token(uint64_t *rng, int n_vocab)
{
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((*rng >> 33) % (uint64_t)n_vocab);
}
