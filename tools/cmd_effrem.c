/*
 * recurd effrem — Effective Remembrance (Buitrago Ruiz & Gu, 2025):
 *
 *   EffRem_T(t) = TV( q(. | x[0:T]), q(. | x[t:T]) ),
 *   TV(p, p') = 1/2 sum_v |p(v) - p'(v)|
 *
 * how much the model's next-token distribution after T tokens still depends
 * on the tokens before t. A model that over-relies on the first tokens has a
 * high value at small t; a healthy one stays near 0 until t is close to T.
 * Each point needs a fresh run over x[t:T]. Windows: x is taken at
 * `--windows` offsets spread over the token stream, and the TV averaged.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tools.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "state.h"

#define MAX_T 64

static void usage(FILE *f)
{
    fprintf(f, "usage: recurd effrem --model DIR (--tokens FILE | --text FILE) [--T 256,1024,4096]\n"
               "                     [--points 16] [--windows 1] [--json]\n"
               "  --T LIST      context lengths T (comma-separated)\n"
               "  --points P    t = k*T/P for k = 0..P-1\n"
               "  --windows W   average over W windows spread over the tokens\n");
}

/* softmax of n logits into p (double for the TV sum). */
static void softmax(const float *lg, int n, double *p)
{
    float mx = lg[0];
    for (int i = 1; i < n; i++)
        mx = lg[i] > mx ? lg[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (p[i] = exp((double)lg[i] - mx));
    for (int i = 0; i < n; i++)
        p[i] /= s;
}

/* Next-token distribution after reading x[0:n) from the zero state. */
static int dist_after(struct fwd *f, struct mstate *s, const int32_t *x, size_t n, float *lg,
                      double *p, int V, char *err, size_t errlen)
{
    state_reset(s);
    int rc = fwd_prefill(f, s, x, n, err, errlen);
    if (rc)
        return rc;
    fwd_logits(f, s->last, 1, lg);
    softmax(lg, V, p);
    return 0;
}

int cmd_effrem(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokens", required_argument, 0, 't'},
        {"text", required_argument, 0, 'x'},
        {"T", required_argument, 0, 'T'},     {"points", required_argument, 0, 'p'},
        {"windows", required_argument, 0, 'w'}, {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *dir = NULL, *tokens_path = NULL, *text_path = NULL, *Tlist = "256,1024,4096";
    long points = 16, windows = 1;
    int json = 0, o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': dir = optarg; break;
        case 't': tokens_path = optarg; break;
        case 'x': text_path = optarg; break;
        case 'T': Tlist = optarg; break;
        case 'j': json = 1; break;
        case 'p':
            if (parse_long_opt(optarg, 1, 1024, &points))
                goto bad;
            break;
        case 'w':
            if (parse_long_opt(optarg, 1, 1024, &windows))
                goto bad;
            break;
        case 'h': usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (!dir || !!tokens_path + !!text_path != 1 || optind != argc)
        goto bad;
    long Ts[MAX_T];
    int nT = 0;
    for (const char *q = Tlist; *q;) {
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || v < 2 || v > (1L << 24) || nT == MAX_T || (*end && *end != ','))
            goto bad;
        Ts[nT++] = v;
        q = *end ? end + 1 : end;
    }
    if (nT == 0)
        goto bad;

    char err[1024];
    struct model *m = NULL;
    struct fwd *f = NULL;
    struct mstate *s = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    float *lg = NULL;
    double *pfull = NULL, *pcut = NULL, *tv = NULL;
    int status = 1, rc;
    if ((rc = model_load(dir, &m, err, sizeof err))) {
        fprintf(stderr, "recurd effrem: %s\n", err);
        goto out;
    }
    const int V = model_config(m)->n_vocab;
    if ((rc = load_input_ids(dir, V, tokens_path, text_path, &ids, &n, err, sizeof err))) {
        fprintf(stderr, "recurd effrem: %s\n", err);
        goto out;
    }
    long Tmax = 0;
    for (int i = 0; i < nT; i++)
        Tmax = Ts[i] > Tmax ? Ts[i] : Tmax;
    if ((size_t)Tmax > n) {
        fprintf(stderr, "recurd effrem: %zu tokens, fewer than T = %ld\n", n, Tmax);
        goto out;
    }
    lg = rc_malloc((size_t)V * sizeof *lg);
    pfull = rc_malloc((size_t)V * sizeof *pfull);
    pcut = rc_malloc((size_t)V * sizeof *pcut);
    tv = rc_calloc((size_t)nT * (size_t)points, sizeof *tv);
    if (!lg || !pfull || !pcut || !tv || fwd_create(m, 256, &f) || state_create(m, &s)) {
        fprintf(stderr, "recurd effrem: out of memory\n");
        goto out;
    }
    for (int ti = 0; ti < nT; ti++) {
        long T = Ts[ti];
        for (long w = 0; w < windows; w++) {
            /* windows spread evenly over [0, n - T] */
            size_t off = windows > 1 ? (size_t)((double)(n - (size_t)T) * w / (windows - 1)) : 0;
            const int32_t *x = ids + off;
            if ((rc = dist_after(f, s, x, (size_t)T, lg, pfull, V, err, sizeof err)))
                goto fail;
            for (long k = 0; k < points; k++) {
                long t = k * T / points;
                if (t == 0)
                    continue; /* x[0:T] itself: TV 0 */
                if ((rc = dist_after(f, s, x + t, (size_t)(T - t), lg, pcut, V, err, sizeof err)))
                    goto fail;
                double d = 0;
                for (int v = 0; v < V; v++)
                    d += fabs(pfull[v] - pcut[v]);
                tv[ti * points + k] += 0.5 * d / (double)windows;
            }
        }
        if (!json) {
            printf("T=%ld:", T);
            for (long k = 0; k < points; k++)
                printf(" t=%ld:%.4f", k * T / points, tv[ti * points + k]);
            printf("\n");
            fflush(stdout);
        }
    }
    if (json) {
        json_t *curves = json_array();
        for (int ti = 0; ti < nT; ti++) {
            json_t *pts = json_array();
            for (long k = 0; k < points; k++)
                json_array_append_new(pts, json_pack("{sI sf}", "t", (json_int_t)(k * Ts[ti] / points),
                                                     "tv", tv[ti * points + k]));
            json_array_append_new(curves, json_pack("{sI so}", "T", (json_int_t)Ts[ti], "points", pts));
        }
        json_t *outj = json_pack("{sI sI so}", "n_tokens", (json_int_t)n, "windows",
                                 (json_int_t)windows, "curves", curves);
        char *d = json_dumps(outj, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(d);
        free(d);
        json_decref(outj);
    }
    status = 0;
    goto out;
fail:
    fprintf(stderr, "recurd effrem: %s\n", err);
out:
    rc_free(ids), rc_free(lg), rc_free(pfull), rc_free(pcut), rc_free(tv);
    state_free(s);
    fwd_free(f);
    model_free(m);
    return status;
bad:
    usage(stderr);
    return 2;
}
