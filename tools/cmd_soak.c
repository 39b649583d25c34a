/*
 * recurd soak — stream N tokens through one session and show that nothing
 * grows: RSS, bytes live in the allocator and the state size are the same
 * at 1k, 10k, 100k, 1M ... tokens; the state stays finite; throughput does
 * not depend on the position.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tools.h"
#include "errors.h"
#include "forward.h"
#include "model.h"
#include "os.h"
#include "state.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: recurd soak (--model DIR | --random NAME) [--tokens N] [--chunk C]\n"
               "                   [--window W]\n"
               "  --tokens N   tokens to stream (default 1000000)\n"
               "  --chunk C    tokens per forward pass (default 256)\n"
               "  --window W   tokens per throughput window (default 4096)\n"
               "  --weights W  auto (default), fp32, bf16, int8: weights in memory\n"
               "Reports at every power of ten and at the end; exits 1 if memory grew or\n"
               "the state stopped being finite.\n");
}

static long n_chunk(long chunk, long left) { return left < chunk ? left : chunk; }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int state_finite(const struct mstate *s, const struct model *m)
{
    const float *p = s->block;
    size_t n = state_bytes(m) / sizeof(float);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i]))
            return 0;
    return 1;
}

struct soak_args {
    struct model_source src;
    long total;  /* tokens to stream */
    long chunk;  /* tokens per forward pass */
    long window; /* tokens per throughput window */
};

static int parse_args(int argc, char **argv, struct soak_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"random", required_argument, 0, 'r'},
        {"tokens", required_argument, 0, 'n'}, {"chunk", required_argument, 0, 'c'},
        {"window", required_argument, 0, 'w'}, {"weights", required_argument, 0, 'W'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    int o;
    *a = (struct soak_args){.total = 1000000, .chunk = 256, .window = 4096};
    a->src.weights = MODEL_WEIGHTS_AUTO;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': a->src.dir = optarg; break;
        case 'r': a->src.random_name = optarg; break;
        case 'n':
            if (parse_long_opt(optarg, 1, 1L << 40, &a->total))
                goto bad;
            break;
        case 'c':
            if (parse_long_opt(optarg, 1, 65536, &a->chunk))
                goto bad;
            break;
        case 'w':
            if (parse_long_opt(optarg, 1, 1L << 30, &a->window))
                goto bad;
            break;
        case 'W':
            if (parse_weights_opt("soak", optarg, &a->src.weights))
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (!!a->src.dir + !!a->src.random_name != 1 || optind != argc)
        goto bad;
    return TOOL_RUN;
bad:
    usage(stderr);
    return 2;
}

/* One soak: the long session and what streams through it. */
struct soak {
    struct model *m;
    struct fwd *f;
    struct mstate *s; /* the long session */
    int32_t *tok;     /* [chunk] */
    int vocab_size;   /* random tokens are drawn from [0, vocab_size) */
    uint64_t rng;     /* token stream, shared by both phases */
    int grew, nonfinite;
};

static void fill_random(struct soak *k, long n)
{
    for (long i = 0; i < n; i++)
        k->tok[i] = random_token(&k->rng, k->vocab_size);
}

/* Streams a->total tokens through the long session, printing a row at every
 * power of ten and at the end; sets grew / nonfinite. Returns 0, or 1 after
 * printing a forward-pass error. */
static int stream_tokens(struct soak *k, const struct soak_args *a)
{
    char err[1024];
    long pos = 0, next_report = 1000, win_start = 0;
    double t_win = now_sec(), first_rate = 0, last_rate = 0;
    size_t rss_first = 0, live_first = 0;
    while (pos < a->total) {
        long n = a->total - pos < a->chunk ? a->total - pos : a->chunk;
        fill_random(k, n);
        if (fwd_prefill(k->f, k->s, k->tok, (size_t)n, err, sizeof err)) {
            fprintf(stderr, "recurd soak: %s\n", err);
            return 1;
        }
        pos += n;
        if (pos - win_start >= a->window) {
            double now = now_sec();
            last_rate = (double)(pos - win_start) / (now - t_win);
            if (first_rate == 0)
                first_rate = last_rate;
            win_start = pos;
            t_win = now;
        }
        if (pos >= next_report || pos == a->total) {
            size_t rss = os_rss_bytes(), live = rc_alloc_live_bytes();
            int fin = state_finite(k->s, k->m);
            if (!rss_first)
                rss_first = rss, live_first = live;
            /* RSS may wobble by a few pages (stdio, kernel accounting). */
            if (rss > rss_first + 256 * 1024 || live != live_first)
                k->grew = 1;
            k->nonfinite |= !fin;
            printf("%12ld %12zu %14zu %12zu %10.1f %8s\n", pos, rss, live, state_bytes(k->m),
                   last_rate, fin ? "yes" : "NO");
            fflush(stdout);
            while (next_report <= pos)
                next_report *= 10;
        }
    }
    printf("throughput: first window %.1f tok/s, last window %.1f tok/s (ratio %.3f; the "
           "machine's load may have changed in between)\n",
           first_rate, last_rate, last_rate / first_rate);
    return 0;
}

/* Position dependence measured under the same load: alternate chunks between
 * a session at position 1024 (restored to that point before each chunk) and
 * the long one (from `total` on), and compare the median time per chunk. */
static void measure_position_dependence(struct soak *k, const struct soak_args *a)
{
    long chunk = a->chunk;
    char err[1024];
    struct mstate *young = NULL, *young0 = NULL;
    enum { PAIRS = 200 };
    double ty[PAIRS], to[PAIRS], ratio[PAIRS];
    if (state_create(k->m, &young) == 0 && state_create(k->m, &young0) == 0) {
        for (long i = 0; i < 1024; i += n_chunk(chunk, 1024 - i)) {
            long n = n_chunk(chunk, 1024 - i);
            for (long j = 0; j < n; j++)
                k->tok[j] = (int32_t)(j % k->vocab_size);
            fwd_prefill(k->f, young0, k->tok, (size_t)n, err, sizeof err);
        }
        for (int p = 0; p < PAIRS; p++) {
            state_copy(young, young0);
            fill_random(k, chunk);
            struct mstate *order[2] = {p & 1 ? k->s : young, p & 1 ? young : k->s};
            for (int q = 0; q < 2; q++) {
                double t0 = now_sec();
                fwd_prefill(k->f, order[q], k->tok, (size_t)chunk, err, sizeof err);
                (order[q] == k->s ? to : ty)[p] = now_sec() - t0;
            }
            ratio[p] = to[p] / ty[p];
        }
        qsort(ty, PAIRS, sizeof ty[0], cmp_double);
        qsort(to, PAIRS, sizeof to[0], cmp_double);
        qsort(ratio, PAIRS, sizeof ratio[0], cmp_double);
        printf("position dependence: median %.2f ms per %ld-token chunk at position 1024, "
               "%.2f ms at %ld+; per-pair time ratio (late/early) median %.3f, quartiles "
               "%.3f..%.3f (%d interleaved pairs)\n",
               ty[PAIRS / 2] * 1e3, chunk, to[PAIRS / 2] * 1e3, a->total, ratio[PAIRS / 2],
               ratio[PAIRS / 4], ratio[3 * PAIRS / 4], PAIRS);
    }
    state_free(young);
    state_free(young0);
}

int cmd_soak(int argc, char **argv)
{
    struct soak_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != TOOL_RUN)
        return rc;
    char err[1024];
    struct soak k = {.rng = 99};
    if (open_model(&a.src, 7, &k.m, err, sizeof err)) {
        fprintf(stderr, "recurd soak: %s\n", err);
        return 1;
    }
    k.vocab_size = model_config(k.m)->vocab_size;
    k.tok = rc_malloc((size_t)a.chunk * sizeof *k.tok);
    if (!k.tok || fwd_create(k.m, (int)a.chunk, &k.f) || state_create(k.m, &k.s)) {
        fprintf(stderr, "recurd soak: out of memory\n");
        rc = 1;
        goto out;
    }
    printf("soak: %s, %ld tokens, chunk %ld, state %zu bytes\n",
           a.src.dir ? a.src.dir : a.src.random_name, a.total, a.chunk, state_bytes(k.m));
    printf("%12s %12s %14s %12s %10s %8s\n", "position", "rss_bytes", "alloc_live", "state_bytes",
           "tok/s", "finite");
    if ((rc = stream_tokens(&k, &a)))
        goto out;
    measure_position_dependence(&k, &a);
    printf("%s\n", k.grew        ? "FAIL: memory grew"
                   : k.nonfinite ? "FAIL: state not finite"
                                 : "ok: constant memory, finite state");
    rc = k.grew || k.nonfinite;
out:
    rc_free(k.tok);
    state_free(k.s);
    fwd_free(k.f);
    model_free(k.m);
    return rc;
}
