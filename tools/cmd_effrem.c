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
               "  --windows W   average over W windows spread over the tokens\n"
               "  --weights W   auto (default), fp32, bf16, int8: weights in memory\n");
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

struct effrem_args {
    const char *dir, *tokens_path, *text_path;
    long Ts[MAX_T]; /* context lengths T, from --T */
    int nT;
    long points;  /* t = k*T/points for k = 0..points-1 */
    long windows; /* windows averaged per T */
    int json, weights;
};

/* Comma-separated integers in [2, 2^24], at most MAX_T of them, at least one. */
static int parse_T_list(const char *list, struct effrem_args *a)
{
    a->nT = 0;
    for (const char *q = list; *q;) {
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || v < 2 || v > (1L << 24) || a->nT == MAX_T || (*end && *end != ','))
            return -1;
        a->Ts[a->nT++] = v;
        q = *end ? end + 1 : end;
    }
    return a->nT ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct effrem_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokens", required_argument, 0, 't'},
        {"text", required_argument, 0, 'x'},
        {"T", required_argument, 0, 'T'},     {"points", required_argument, 0, 'p'},
        {"windows", required_argument, 0, 'w'}, {"json", no_argument, 0, 'j'},
        {"weights", required_argument, 0, 'W'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *Tlist = "256,1024,4096";
    int o;
    memset(a, 0, sizeof *a);
    a->points = 16;
    a->windows = 1;
    a->weights = MODEL_WEIGHTS_AUTO;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->dir = optarg; break;
        case 't': a->tokens_path = optarg; break;
        case 'x': a->text_path = optarg; break;
        case 'T': Tlist = optarg; break;
        case 'j': a->json = 1; break;
        case 'p':
            if (parse_long_opt(optarg, 1, 1024, &a->points))
                goto bad;
            break;
        case 'w':
            if (parse_long_opt(optarg, 1, 1024, &a->windows))
                goto bad;
            break;
        case 'W':
            if (parse_weights_opt("effrem", optarg, &a->weights))
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (!a->dir || !!a->tokens_path + !!a->text_path != 1 || optind != argc ||
        parse_T_list(Tlist, a))
        goto bad;
    return TOOL_RUN;
bad:
    usage(stderr);
    return 2;
}

/* The model's buffers for one curve point: logits and the two distributions. */
struct effrem_work {
    struct fwd *f;
    struct mstate *s;
    float *lg;             /* [V] */
    double *pfull, *pcut;  /* [V] */
    int V;
};

/* Adds the window-averaged TV at every point of context length T to
 * tv[0:points). */
static int measure_curve(struct effrem_work *w, const struct effrem_args *a, long T,
                         const int32_t *ids, size_t n, double *tv, char *err, size_t errlen)
{
    int rc;
    for (long wi = 0; wi < a->windows; wi++) {
        /* windows spread evenly over [0, n - T] */
        size_t off =
            a->windows > 1 ? (size_t)((double)(n - (size_t)T) * wi / (a->windows - 1)) : 0;
        const int32_t *x = ids + off;
        if ((rc = dist_after(w->f, w->s, x, (size_t)T, w->lg, w->pfull, w->V, err, errlen)))
            return rc;
        for (long k = 0; k < a->points; k++) {
            long t = k * T / a->points;
            if (t == 0)
                continue; /* x[0:T] itself: TV 0 */
            if ((rc = dist_after(w->f, w->s, x + t, (size_t)(T - t), w->lg, w->pcut, w->V, err,
                                 errlen)))
                return rc;
            double d = 0;
            for (int v = 0; v < w->V; v++)
                d += fabs(w->pfull[v] - w->pcut[v]);
            tv[k] += 0.5 * d / (double)a->windows;
        }
    }
    return 0;
}

static void print_curve_text(long T, long points, const double *tv)
{
    printf("T=%ld:", T);
    for (long k = 0; k < points; k++)
        printf(" t=%ld:%.4f", k * T / points, tv[k]);
    printf("\n");
    fflush(stdout);
}

static void print_json(const struct effrem_args *a, size_t n, const double *tv)
{
    long points = a->points;
    json_t *curves = json_array();
    for (int ti = 0; ti < a->nT; ti++) {
        json_t *pts = json_array();
        for (long k = 0; k < points; k++)
            json_array_append_new(pts, json_pack("{sI sf}", "t",
                                                 (json_int_t)(k * a->Ts[ti] / points), "tv",
                                                 tv[ti * points + k]));
        json_array_append_new(curves,
                              json_pack("{sI so}", "T", (json_int_t)a->Ts[ti], "points", pts));
    }
    json_t *outj = json_pack("{sI sI so}", "n_tokens", (json_int_t)n, "windows",
                             (json_int_t)a->windows, "curves", curves);
    char *d = json_dumps(outj, JSON_COMPACT | JSON_REAL_PRECISION(6));
    puts(d);
    free(d);
    json_decref(outj);
}

int cmd_effrem(int argc, char **argv)
{
    struct effrem_args a;
    int status = parse_args(argc, argv, &a);
    if (status != TOOL_RUN)
        return status;
    char err[1024];
    struct model *m = NULL;
    struct effrem_work w = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    double *tv = NULL;
    status = 1;
    if (open_model_and_input(a.dir, a.weights, a.tokens_path, a.text_path, &m, &ids, &n, err, sizeof err))
        goto fail;
    long Tmax = 0;
    for (int i = 0; i < a.nT; i++)
        Tmax = a.Ts[i] > Tmax ? a.Ts[i] : Tmax;
    if ((size_t)Tmax > n) {
        fprintf(stderr, "recurd effrem: %zu tokens, fewer than T = %ld\n", n, Tmax);
        goto out;
    }
    w.V = model_config(m)->n_vocab;
    w.lg = rc_malloc((size_t)w.V * sizeof *w.lg);
    w.pfull = rc_malloc((size_t)w.V * sizeof *w.pfull);
    w.pcut = rc_malloc((size_t)w.V * sizeof *w.pcut);
    tv = rc_calloc((size_t)a.nT * (size_t)a.points, sizeof *tv);
    if (!w.lg || !w.pfull || !w.pcut || !tv || fwd_create(m, 256, &w.f) ||
        state_create(m, &w.s)) {
        fprintf(stderr, "recurd effrem: out of memory\n");
        goto out;
    }
    for (int ti = 0; ti < a.nT; ti++) {
        if (measure_curve(&w, &a, a.Ts[ti], ids, n, tv + ti * a.points, err, sizeof err))
            goto fail;
        if (!a.json)
            print_curve_text(a.Ts[ti], a.points, tv + ti * a.points);
    }
    if (a.json)
        print_json(&a, n, tv);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "recurd effrem: %s\n", err);
out:
    rc_free(ids), rc_free(w.lg), rc_free(w.pfull), rc_free(w.pcut), rc_free(tv);
    state_free(w.s);
    fwd_free(w.f);
    model_free(m);
    return status;
}
