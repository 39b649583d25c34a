/*
 * recurd score — per-token log-probs, NLL, perplexity and perplexity by
 * position bucket of a token stream, offline.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "tools.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "score.h"
#include "state.h"


static void usage(FILE *f)
{
    fprintf(f,
            "usage: recurd score --model DIR (--tokens FILE | --text FILE) [--json] [--chunk N]\n"
            "                    [--max-details N] [--max-tokens N] [--progress]\n"
            "                    [--restart-ctx T [--targets FILE | --targets-per-bucket K]]\n"
            "                    [--state-every N]\n"
            "  --tokens FILE     whitespace-separated token ids ('-' for stdin)\n"
            "  --text FILE       UTF-8 text ('-' for stdin), encoded with DIR/tokenizer.json\n"
            "                    (byte ids if DIR has none)\n"
            "  --json            one JSON object: n_tokens, n_scored, nll, ppl,\n"
            "                    token_logprobs (omitted above --max-details), buckets\n"
            "  --chunk N         tokens per forward pass (default 256)\n"
            "  --max-details N   per-token log-probs listed up to N scored tokens\n"
            "                    (default 1000000)\n"
            "  --max-tokens N    score only the first N tokens of the input\n"
            "  --progress        progress lines on stderr (default: when stderr is a tty)\n"
            "  --restart-ctx T   failure ratio: each target token x[t] is also predicted\n"
            "                    from the zero state after reading exactly x[t-T:t]; per\n"
            "                    bucket [2^k, 2^(k+1)) the stream's and the restart's NLL\n"
            "                    and ratio = exp(mean stream NLL - mean restart NLL)\n"
            "  --targets FILE    the target positions t (whitespace-separated, T <= t < n)\n"
            "  --targets-per-bucket K  else K evenly spaced targets in each bucket from\n"
            "                    the first power of two >= T (default 64)\n"
            "  --state-every N   the SSM state's standard deviation (all layers and per\n"
            "                    layer) after 2^k tokens and after every N tokens\n"
            WEIGHTS_HELP);
}

struct collect {
    float *lp;     /* log-prob of token i+1 in lp[i], when listed or --restart-ctx needs them */
    int list;      /* lp goes into the output (n - 1 <= --max-details) */
    size_t n, cap;
    double t0, last_report;
    size_t total;
    int progress;
};

static int on_token(void *ud, const struct score_token *t)
{
    struct collect *c = ud;
    if (c->lp && c->n < c->cap)
        c->lp[c->n] = t->logprob;
    c->n++;
    if (c->progress && (c->n & 1023) == 0) {
        double now = now_sec();
        if (now - c->last_report >= 2.0) {
            fprintf(stderr, "score: %zu/%zu tokens, %.0f tok/s\n", c->n, c->total,
                    (double)c->n / (now - c->t0));
            c->last_report = now;
        }
    }
    return 0;
}

static json_t *buckets_json(const struct score_stats *st)
{
    json_t *a = json_array();
    for (int i = 0; i < st->nb; i++) {
        const struct score_bucket *b = &st->b[i];
        if (b->n == 0)
            continue;
        json_array_append_new(a, json_pack("{sI sI sI sf sf}", "start", (json_int_t)b->start,
                                           "end", (json_int_t)b->end, "n", (json_int_t)b->n,
                                           "nll", b->nll, "ppl", score_ppl(b->nll, b->n)));
    }
    return a;
}

struct score_args {
    const char *model_dir, *tokens_path, *text_path;
    int json, progress, weights;
    long chunk;       /* tokens per forward pass */
    long max_details; /* per-token log-probs listed up to this many scored tokens */
    long max_tokens;  /* 0 = all of the input */
    long restart_ctx; /* 0 = no failure ratio */
    const char *targets_path;
    long per_bucket;  /* targets per bucket when there is no --targets file */
    long state_every; /* 0 = no state std trace */
};

static int parse_args(int argc, char **argv, struct score_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"tokens", required_argument, 0, 't'},
        {"text", required_argument, 0, 'x'},
        {"json", no_argument, 0, 'j'},         {"chunk", required_argument, 0, 'c'},
        {"max-details", required_argument, 0, 'd'}, {"progress", no_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"weights", required_argument, 0, 'W'},
        {"restart-ctx", required_argument, 0, 'R'}, {"targets", required_argument, 0, 'T'},
        {"targets-per-bucket", required_argument, 0, 'K'},
        {"state-every", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int o;
    *a = (struct score_args){.progress = isatty(2), .chunk = 256, .max_details = 1000000,
                             .weights = MODEL_WEIGHTS_AUTO, .per_bucket = 0};
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->model_dir = optarg; break;
        case 't': a->tokens_path = optarg; break;
        case 'x': a->text_path = optarg; break;
        case 'j': a->json = 1; break;
        case 'p': a->progress = 1; break;
        case 'c':
            if (parse_long_opt(optarg, 1, 65536, &a->chunk)) {
                fprintf(stderr, "recurd score: --chunk must be an integer in [1, 65536]\n");
                return 2;
            }
            break;
        case 'd':
            if (parse_long_opt(optarg, 0, 1L << 40, &a->max_details)) {
                fprintf(stderr, "recurd score: --max-details must be a non-negative integer\n");
                return 2;
            }
            break;
        case 'n':
            if (parse_long_opt(optarg, 1, 1L << 40, &a->max_tokens)) {
                fprintf(stderr, "recurd score: --max-tokens must be a positive integer\n");
                return 2;
            }
            break;
        case 'W':
            if (parse_weights_opt("score", optarg, &a->weights))
                return 2;
            break;
        case 'R':
            if (parse_long_opt(optarg, 1, 1L << 20, &a->restart_ctx)) {
                fprintf(stderr, "recurd score: --restart-ctx must be an integer in [1, 1048576]\n");
                return 2;
            }
            break;
        case 'T': a->targets_path = optarg; break;
        case 'K':
            if (parse_long_opt(optarg, 1, 1L << 20, &a->per_bucket)) {
                fprintf(stderr,
                        "recurd score: --targets-per-bucket must be an integer in [1, 1048576]\n");
                return 2;
            }
            break;
        case 'S':
            if (parse_long_opt(optarg, 1, 1L << 40, &a->state_every)) {
                fprintf(stderr, "recurd score: --state-every must be a positive integer\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!a->model_dir || !!a->tokens_path + !!a->text_path != 1 || optind != argc) {
        usage(stderr);
        return 2;
    }
    if ((a->targets_path || a->per_bucket) && !a->restart_ctx) {
        fprintf(stderr, "recurd score: --targets and --targets-per-bucket need --restart-ctx\n");
        return 2;
    }
    if (a->targets_path && !strcmp(a->targets_path, "-") &&
        ((a->tokens_path && !strcmp(a->tokens_path, "-")) ||
         (a->text_path && !strcmp(a->text_path, "-")))) {
        fprintf(stderr, "recurd score: the input and --targets cannot both be stdin ('-')\n");
        return 2;
    }
    if (a->targets_path && a->per_bucket) {
        fprintf(stderr, "recurd score: give --targets or --targets-per-bucket, not both\n");
        return 2;
    }
    if (a->restart_ctx && !a->targets_path && !a->per_bucket)
        a->per_bucket = 64;
    return TOOL_RUN;
}

/* ---- failure ratio (--restart-ctx) and state std (--state-every) ---------- */

struct target {
    int64_t pos;     /* the token x[pos] is predicted */
    float stream_lp; /* log p(x[pos] | x[0:pos]), the whole stream */
    float restart_lp; /* log p(x[pos] | x[pos-T:pos]), from the zero state */
};

static int cmp_target(const void *a, const void *b)
{
    int64_t x = ((const struct target *)a)->pos, y = ((const struct target *)b)->pos;
    return (x > y) - (x < y);
}

/* Targets from a file of positions: each in [T, n), sorted, duplicates dropped. */
static int read_targets(const char *path, int64_t T, size_t n, struct target **out, size_t *cnt,
                        char *err, size_t errlen)
{
    char *text = NULL;
    size_t len, k = 0, cap = 256;
    int rc = read_file_all(path, (size_t)1 << 30, &text, &len, err, errlen);
    if (rc)
        return rc;
    struct target *v = rc_malloc(cap * sizeof *v);
    if (!v) {
        rc_free(text);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    const char *p = text, *w;
    size_t wl;
    long long t;
    int r;
    while ((r = next_int_word(&p, &t, &w, &wl)) != 0) {
        if (r < 0 || t < T || (unsigned long long)t >= n) {
            rc = rc_fail(err, errlen, RC_EINVAL,
                         "%s: entry %zu ('%.*s') is not a position in [%lld, %zu) (targets "
                         "need --restart-ctx tokens before them)",
                         path, k, (int)(wl > 24 ? 24 : wl), w, (long long)T, n);
            goto fail;
        }
        if (k == cap) {
            struct target *nv = rc_realloc(v, 2 * cap * sizeof *v);
            if (!nv) {
                rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory");
                goto fail;
            }
            v = nv;
            cap *= 2;
        }
        v[k++] = (struct target){.pos = t};
    }
    rc_free(text);
    qsort(v, k, sizeof *v, cmp_target);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || v[i].pos != v[u - 1].pos)
            v[u++] = v[i];
    *out = v;
    *cnt = u;
    return 0;
fail:
    rc_free(text);
    rc_free(v);
    return rc;
}

/* K evenly spaced targets in each bucket [lo, 2lo) from the first power of two
 * >= T that holds tokens: lo + floor((i + 1/2) span / K), i < K, every
 * position where the bucket (cut at n) has K or fewer. */
static int even_targets(int64_t T, size_t n, long K, struct target **out, size_t *cnt)
{
    int64_t lo = 1;
    while (lo < T)
        lo *= 2;
    size_t cap = 0;
    for (int64_t b = lo; (size_t)b < n; b *= 2)
        cap += (size_t)K;
    struct target *v = rc_malloc((cap ? cap : 1) * sizeof *v);
    if (!v)
        return RC_ENOMEM;
    size_t k = 0;
    for (; (size_t)lo < n; lo *= 2) {
        int64_t hi = (size_t)(2 * lo) < n ? 2 * lo : (int64_t)n, span = hi - lo;
        if (span <= K) {
            for (int64_t t = lo; t < hi; t++)
                v[k++] = (struct target){.pos = t};
        } else {
            for (long i = 0; i < K; i++)
                v[k++] = (struct target){.pos = lo + (int64_t)(((double)i + 0.5) * (double)span / (double)K)};
        }
    }
    *out = v;
    *cnt = k;
    return 0;
}

static int on_last(void *ud, const struct score_token *t)
{
    *(float *)ud = t->logprob;
    return 0;
}

/* Each target's restart log-prob: the zero state reads x[t-T : t] unscored
 * (no logits), then x[t] is scored from the last hidden row. */
static int run_restarts(struct fwd *f, struct scorer *sc, struct mstate *r, const int32_t *ids,
                        int64_t T, struct target *tg, size_t nt, int progress, char *err,
                        size_t errlen)
{
    double t0 = now_sec(), last = t0;
    for (size_t i = 0; i < nt; i++) {
        struct score_stats st;
        score_stats_init(&st);
        state_reset(r);
        float lp = NAN;
        int rc = fwd_prefill(f, r, ids + tg[i].pos - T, (size_t)T, err, errlen);
        if (!rc)
            rc = scorer_run(sc, r, ids + tg[i].pos, 1, &st, on_last, &lp, err, errlen);
        if (rc)
            return rc;
        tg[i].restart_lp = lp;
        if (progress && now_sec() - last >= 2.0) {
            last = now_sec();
            fprintf(stderr, "score: restart %zu/%zu targets\n", i + 1, nt);
        }
    }
    return 0;
}

struct fbucket {
    int64_t start, end, n;
    double stream_nll, restart_nll; /* sums */
};

/* Targets pooled by bucket [2^k, 2^(k+1)) of their position; returns the count. */
static int failure_buckets(const struct target *tg, size_t nt, struct fbucket *b)
{
    int nb = 0;
    for (size_t i = 0; i < nt; i++) {
        int64_t lo = (int64_t)1 << (score_bucket_of(tg[i].pos) - 1);
        if (nb == 0 || b[nb - 1].start != lo)
            b[nb++] = (struct fbucket){.start = lo, .end = 2 * lo};
        b[nb - 1].n++;
        b[nb - 1].stream_nll -= tg[i].stream_lp;
        b[nb - 1].restart_nll -= tg[i].restart_lp;
    }
    return nb;
}

struct std_point {
    int64_t pos;
    double std;   /* over every SSM state float of every layer */
    double *layers; /* n_layer, into one array */
};

/* Population standard deviation of the SSM state, overall and per layer. */
static void state_std(const struct mstate *s, int n_layer, struct std_point *p)
{
    double all = 0, all2 = 0;
    size_t m = s->ssm_per_layer;
    for (int l = 0; l < n_layer; l++) {
        const float *x = s->ssm + (size_t)l * m;
        double a = 0, a2 = 0;
        for (size_t i = 0; i < m; i++) {
            a += x[i];
            a2 += (double)x[i] * x[i];
        }
        double mu = a / (double)m;
        p->layers[l] = sqrt(fmax(0.0, a2 / (double)m - mu * mu));
        all += a;
        all2 += a2;
    }
    double N = (double)m * n_layer, mu = all / N;
    p->std = sqrt(fmax(0.0, all2 / N - mu * mu));
    p->pos = s->pos;
}

/* Where the state std is taken: after 2^k tokens and every `every` tokens, up to n. */
static size_t std_cuts(size_t n, long every, int64_t *cuts, size_t cap)
{
    size_t k = 0;
    int64_t p2 = 1, pe = every;
    while ((size_t)p2 <= n || (size_t)pe <= n) {
        int64_t c = p2 < pe ? p2 : pe;
        if ((size_t)c > n || k == cap)
            break;
        cuts[k++] = c;
        if (p2 == c)
            p2 *= 2;
        if (pe == c)
            pe += every;
    }
    return k;
}

/* What --restart-ctx and --state-every add to the report. */
struct extra {
    int64_t T;          /* 0: no failure ratio */
    struct target *tg;
    size_t nt;
    struct fbucket fb[64];
    int nfb;
    struct std_point *sp;
    size_t nsp;
    int n_layer;
};

static json_t *failure_json(const struct extra *x)
{
    json_t *b = json_array(), *t = json_array();
    for (int i = 0; i < x->nfb; i++) {
        const struct fbucket *f = &x->fb[i];
        json_array_append_new(
            b, json_pack("{sI sI sI sf sf sf sf sf}", "start", (json_int_t)f->start, "end",
                         (json_int_t)f->end, "n", (json_int_t)f->n, "stream_nll", f->stream_nll,
                         "restart_nll", f->restart_nll, "stream_ppl",
                         score_ppl(f->stream_nll, f->n), "restart_ppl",
                         score_ppl(f->restart_nll, f->n), "ratio",
                         exp((f->stream_nll - f->restart_nll) / (double)f->n)));
    }
    for (size_t i = 0; i < x->nt; i++)
        json_array_append_new(t, json_pack("{sI sf sf}", "pos", (json_int_t)x->tg[i].pos,
                                           "stream_logprob", (double)x->tg[i].stream_lp,
                                           "restart_logprob", (double)x->tg[i].restart_lp));
    return json_pack("{sI so so}", "ctx", (json_int_t)x->T, "buckets", b, "targets", t);
}

static json_t *state_std_json(const struct extra *x)
{
    json_t *a = json_array();
    for (size_t i = 0; i < x->nsp; i++) {
        json_t *l = json_array();
        for (int k = 0; k < x->n_layer; k++)
            json_array_append_new(l, json_real(x->sp[i].layers[k]));
        json_array_append_new(a, json_pack("{sI sf so}", "pos", (json_int_t)x->sp[i].pos, "std",
                                           x->sp[i].std, "layers", l));
    }
    return a;
}

/* One JSON object on stdout. Returns 0, or 1 after printing an error. */
static int print_json(size_t n, const struct score_stats *st, const struct collect *col,
                      double secs, const struct extra *x)
{
    json_t *out = json_pack("{sI sI sf sf sf}", "n_tokens", (json_int_t)n, "n_scored",
                            (json_int_t)st->n, "nll", st->nll, "ppl", score_ppl(st->nll, st->n),
                            "seconds", secs);
    if (col->lp && col->list) {
        json_t *a = json_array();
        for (size_t i = 0; i < col->n; i++)
            json_array_append_new(a, json_real(col->lp[i]));
        json_object_set_new(out, "token_logprobs", a);
    }
    json_object_set_new(out, "buckets", buckets_json(st));
    if (x->T)
        json_object_set_new(out, "failure", failure_json(x));
    if (x->sp)
        json_object_set_new(out, "state_std", state_std_json(x));
    char *dump = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(out);
    if (!dump) {
        fprintf(stderr, "recurd score: out of memory\n");
        return 1;
    }
    puts(dump);
    free(dump);
    return 0;
}

/* Per-token lines (when collected), totals and buckets as '#' comments. */
static void print_text(const int32_t *ids, size_t n, const struct score_stats *st,
                       const struct collect *col, const struct extra *x)
{
    if (col->lp && col->list) {
        printf("# position id logprob\n");
        for (size_t i = 0; i < col->n; i++)
            printf("%zu %d %.6f\n", i + 1, ids[i + 1], (double)col->lp[i]);
    }
    printf("# n_tokens %zu scored %lld nll %.6f ppl %.4f\n", n, (long long)st->n, st->nll,
           score_ppl(st->nll, st->n));
    printf("# bucket            n        ppl\n");
    for (int i = 0; i < st->nb; i++)
        if (st->b[i].n)
            printf("# [%lld, %lld) %lld %.4f\n", (long long)st->b[i].start,
                   (long long)st->b[i].end, (long long)st->b[i].n,
                   score_ppl(st->b[i].nll, st->b[i].n));
    if (x->T) {
        printf("# failure ratio, restart from the zero state %lld tokens before each target\n"
               "# bucket            targets  stream_ppl restart_ppl ratio\n",
               (long long)x->T);
        for (int i = 0; i < x->nfb; i++) {
            const struct fbucket *f = &x->fb[i];
            printf("# [%lld, %lld) %lld %.4f %.4f %.4f\n", (long long)f->start, (long long)f->end,
                   (long long)f->n, score_ppl(f->stream_nll, f->n), score_ppl(f->restart_nll, f->n),
                   exp((f->stream_nll - f->restart_nll) / (double)f->n));
        }
    }
    if (x->sp) {
        printf("# state_std position std [per layer]\n");
        for (size_t i = 0; i < x->nsp; i++) {
            printf("# %lld %.6g", (long long)x->sp[i].pos, x->sp[i].std);
            for (int k = 0; k < x->n_layer; k++)
                printf(" %.6g", x->sp[i].layers[k]);
            printf("\n");
        }
    }
}

int cmd_score(int argc, char **argv)
{
    struct score_args a;
    int status = parse_args(argc, argv, &a);
    if (status != TOOL_RUN)
        return status;
    char err[1024];
    struct model *m = NULL;
    struct fwd *f = NULL;
    struct scorer *sc = NULL;
    struct mstate *s = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    struct collect col = {0};
    struct extra x = {0};
    struct mstate *rs = NULL; /* the restarts' state */
    int64_t *cuts = NULL;
    double *layer_std = NULL;
    status = 1;
    if (open_model_and_input(a.model_dir, a.weights, a.tokens_path, a.text_path, &m, &ids, &n, err,
                             sizeof err)) {
        fprintf(stderr, "recurd score: %s\n", err);
        goto out;
    }
    if (a.max_tokens && n > (size_t)a.max_tokens)
        n = (size_t)a.max_tokens;
    if (n == 0) {
        fprintf(stderr, "recurd score: %s: no tokens\n",
                a.tokens_path ? a.tokens_path : a.text_path);
        goto out;
    }
    if (fwd_create(m, (int)a.chunk, &f) || scorer_create(f, 0, &sc) || state_create(m, &s)) {
        fprintf(stderr, "recurd score: out of memory\n");
        goto out;
    }
    col.list = n - 1 <= (size_t)a.max_details;
    col.cap = col.total = n - 1;
    if ((col.list || a.restart_ctx) && !(col.lp = rc_malloc((n > 1 ? n - 1 : 1) * sizeof(float)))) {
        fprintf(stderr, "recurd score: out of memory\n");
        goto out;
    }
    col.progress = a.progress;
    col.t0 = col.last_report = now_sec();
    if (a.restart_ctx) {
        int rc = a.targets_path ? read_targets(a.targets_path, a.restart_ctx, n, &x.tg, &x.nt, err,
                                               sizeof err)
                                : even_targets(a.restart_ctx, n, a.per_bucket, &x.tg, &x.nt);
        if (rc) {
            fprintf(stderr, "recurd score: %s\n", rc == RC_ENOMEM ? "out of memory" : err);
            goto out;
        }
        x.T = a.restart_ctx;
        if (state_create(m, &rs)) {
            fprintf(stderr, "recurd score: out of memory\n");
            goto out;
        }
    }
    size_t ncut = 0;
    if (a.state_every) {
        size_t cap = 64 + n / (size_t)a.state_every + 1;
        cuts = rc_malloc(cap * sizeof *cuts);
        x.n_layer = model_config(m)->n_layer;
        ncut = cuts ? std_cuts(n, a.state_every, cuts, cap) : 0;
        x.sp = rc_malloc((ncut ? ncut : 1) * sizeof *x.sp);
        layer_std = rc_malloc((ncut ? ncut : 1) * (size_t)x.n_layer * sizeof(double));
        if (!cuts || !x.sp || !layer_std) {
            fprintf(stderr, "recurd score: out of memory\n");
            goto out;
        }
    }
    struct score_stats st;
    score_stats_init(&st);
    /* the stream, in pieces that end where the state std is taken */
    size_t done = 0;
    for (size_t c = 0; c <= ncut; c++) {
        size_t end = c < ncut ? (size_t)cuts[c] : n;
        if (end > done &&
            scorer_run(sc, s, ids + done, end - done, &st, on_token, &col, err, sizeof err)) {
            fprintf(stderr, "recurd score: %s\n", err);
            goto out;
        }
        done = end;
        if (c < ncut) {
            x.sp[c].layers = layer_std + c * (size_t)x.n_layer;
            state_std(s, x.n_layer, &x.sp[c]);
            x.nsp = c + 1;
        }
    }
    if (x.T) {
        for (size_t i = 0; i < x.nt; i++)
            x.tg[i].stream_lp = col.lp[x.tg[i].pos - 1];
        if (run_restarts(f, sc, rs, ids, x.T, x.tg, x.nt, a.progress, err, sizeof err)) {
            fprintf(stderr, "recurd score: %s\n", err);
            goto out;
        }
        x.nfb = failure_buckets(x.tg, x.nt, x.fb);
    }
    double secs = now_sec() - col.t0;
    if (a.progress)
        fprintf(stderr, "score: %zu tokens in %.1f s, %.0f tok/s\n", n, secs, (double)n / secs);
    if (a.json && print_json(n, &st, &col, secs, &x))
        goto out;
    if (!a.json)
        print_text(ids, n, &st, &col, &x);
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    rc_free(col.lp);
    rc_free(x.tg);
    rc_free(x.sp);
    rc_free(cuts);
    rc_free(layer_std);
    state_free(rs);
    rc_free(ids);
    state_free(s);
    scorer_free(sc);
    fwd_free(f);
    model_free(m);
    return status;
}
