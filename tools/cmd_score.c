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
            WEIGHTS_HELP);
}

struct collect {
    float *lp;     /* per-token log-probs, or NULL when over the limit */
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
};

static int parse_args(int argc, char **argv, struct score_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"tokens", required_argument, 0, 't'},
        {"text", required_argument, 0, 'x'},
        {"json", no_argument, 0, 'j'},         {"chunk", required_argument, 0, 'c'},
        {"max-details", required_argument, 0, 'd'}, {"progress", no_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'}, {"weights", required_argument, 0, 'W'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int o;
    *a = (struct score_args){.progress = isatty(2), .chunk = 256, .max_details = 1000000,
                             .weights = MODEL_WEIGHTS_AUTO};
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
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!a->model_dir || !!a->tokens_path + !!a->text_path != 1 || optind != argc) {
        usage(stderr);
        return 2;
    }
    return TOOL_RUN;
}

/* One JSON object on stdout. Returns 0, or 1 after printing an error. */
static int print_json(size_t n, const struct score_stats *st, const struct collect *col,
                      double secs)
{
    json_t *out = json_pack("{sI sI sf sf sf}", "n_tokens", (json_int_t)n, "n_scored",
                            (json_int_t)st->n, "nll", st->nll, "ppl", score_ppl(st->nll, st->n),
                            "seconds", secs);
    if (col->lp) {
        json_t *a = json_array();
        for (size_t i = 0; i < col->n; i++)
            json_array_append_new(a, json_real(col->lp[i]));
        json_object_set_new(out, "token_logprobs", a);
    }
    json_object_set_new(out, "buckets", buckets_json(st));
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
                       const struct collect *col)
{
    if (col->lp) {
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
    size_t max_details = (size_t)a.max_details;
    col.cap = n - 1 < max_details ? n - 1 : max_details;
    col.lp = n - 1 <= max_details ? rc_malloc((col.cap ? col.cap : 1) * sizeof(float)) : NULL;
    col.total = n - 1;
    col.progress = a.progress;
    col.t0 = col.last_report = now_sec();
    struct score_stats st;
    score_stats_init(&st);
    if (scorer_run(sc, s, ids, n, &st, on_token, &col, err, sizeof err)) {
        fprintf(stderr, "recurd score: %s\n", err);
        goto out;
    }
    double secs = now_sec() - col.t0;
    if (a.progress)
        fprintf(stderr, "score: %zu tokens in %.1f s, %.0f tok/s\n", n, secs, (double)n / secs);
    if (a.json && print_json(n, &st, &col, secs))
        goto out;
    if (!a.json)
        print_text(ids, n, &st, &col);
    status = fflush(stdout) == 0 ? 0 : 1;
out:
    rc_free(col.lp);
    rc_free(ids);
    state_free(s);
    scorer_free(sc);
    fwd_free(f);
    model_free(m);
    return status;
}
