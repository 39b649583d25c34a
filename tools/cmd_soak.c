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

int cmd_soak(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"random", required_argument, 0, 'r'},
        {"tokens", required_argument, 0, 'n'}, {"chunk", required_argument, 0, 'c'},
        {"window", required_argument, 0, 'w'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *dir = NULL, *named = NULL;
    long total = 1000000, chunk = 256, window = 4096;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'm': dir = optarg; break;
        case 'r': named = optarg; break;
        case 'n':
            if (parse_long_opt(optarg, 1, 1L << 40, &total))
                goto bad;
            break;
        case 'c':
            if (parse_long_opt(optarg, 1, 65536, &chunk))
                goto bad;
            break;
        case 'w':
            if (parse_long_opt(optarg, 1, 1L << 30, &window))
                goto bad;
            break;
        case 'h': usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (!!dir + !!named != 1 || optind != argc)
        goto bad;

    char err[1024];
    struct model *m = NULL;
    struct model_config cfg;
    int rc = dir ? model_load(dir, &m, err, sizeof err)
                 : (model_config_named(named, &cfg)
                        ? rc_fail(err, sizeof err, RC_EINVAL, "unknown shape '%s'", named)
                        : model_create_random(&cfg, 7, &m, err, sizeof err));
    if (rc) {
        fprintf(stderr, "recurd soak: %s\n", err);
        return 1;
    }
    const struct model_config *c = model_config(m);
    struct fwd *f = NULL;
    struct mstate *s = NULL;
    int32_t *tok = rc_malloc((size_t)chunk * sizeof *tok);
    if (!tok || fwd_create(m, (int)chunk, &f) || state_create(m, &s)) {
        fprintf(stderr, "recurd soak: out of memory\n");
        return 1;
    }
    printf("soak: %s, %ld tokens, chunk %ld, state %zu bytes\n", dir ? dir : named, total, chunk,
           state_bytes(m));
    printf("%12s %12s %14s %12s %10s %8s\n", "position", "rss_bytes", "alloc_live", "state_bytes",
           "tok/s", "finite");
    uint64_t rng = 99;
    long pos = 0, next_report = 1000, win_start = 0;
    double t_win = now_sec(), first_rate = 0, last_rate = 0;
    size_t rss_first = 0, live_first = 0;
    int grew = 0, nonfinite = 0;
    while (pos < total) {
        long n = total - pos < chunk ? total - pos : chunk;
        for (long i = 0; i < n; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int32_t)((rng >> 33) % (uint64_t)c->vocab_size);
        }
        if ((rc = fwd_prefill(f, s, tok, (size_t)n, err, sizeof err))) {
            fprintf(stderr, "recurd soak: %s\n", err);
            return 1;
        }
        pos += n;
        if (pos - win_start >= window) {
            double now = now_sec();
            last_rate = (double)(pos - win_start) / (now - t_win);
            if (first_rate == 0)
                first_rate = last_rate;
            win_start = pos;
            t_win = now;
        }
        if (pos >= next_report || pos == total) {
            size_t rss = os_rss_bytes(), live = rc_alloc_live_bytes();
            int fin = state_finite(s, m);
            if (!rss_first)
                rss_first = rss, live_first = live;
            /* RSS may wobble by a few pages (stdio, kernel accounting). */
            if (rss > rss_first + 256 * 1024 || live != live_first)
                grew = 1;
            nonfinite |= !fin;
            printf("%12ld %12zu %14zu %12zu %10.1f %8s\n", pos, rss, live, state_bytes(m),
                   last_rate, fin ? "yes" : "NO");
            fflush(stdout);
            while (next_report <= pos)
                next_report *= 10;
        }
    }
    printf("throughput: first window %.1f tok/s, last window %.1f tok/s (ratio %.3f; the "
           "machine's load may have changed in between)\n",
           first_rate, last_rate, last_rate / first_rate);

    /* Position dependence measured under the same load: alternate chunks
     * between a session at position 1024 (restored to that point before each
     * chunk) and the long one (from `total` on), and compare the median time
     * per chunk. */
    struct mstate *young = NULL, *young0 = NULL;
    enum { PAIRS = 200 };
    double ty[PAIRS], to[PAIRS], ratio[PAIRS];
    if (state_create(m, &young) == 0 && state_create(m, &young0) == 0) {
        for (long i = 0; i < 1024; i += n_chunk(chunk, 1024 - i)) {
            long n = n_chunk(chunk, 1024 - i);
            for (long j = 0; j < n; j++)
                tok[j] = (int32_t)(j % c->vocab_size);
            fwd_prefill(f, young0, tok, (size_t)n, err, sizeof err);
        }
        for (int p = 0; p < PAIRS; p++) {
            state_copy(young, young0);
            for (long j = 0; j < chunk; j++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                tok[j] = (int32_t)((rng >> 33) % (uint64_t)c->vocab_size);
            }
            struct mstate *order[2] = {p & 1 ? s : young, p & 1 ? young : s};
            for (int q = 0; q < 2; q++) {
                double t0 = now_sec();
                fwd_prefill(f, order[q], tok, (size_t)chunk, err, sizeof err);
                (order[q] == s ? to : ty)[p] = now_sec() - t0;
            }
            ratio[p] = to[p] / ty[p];
        }
        qsort(ty, PAIRS, sizeof ty[0], cmp_double);
        qsort(to, PAIRS, sizeof to[0], cmp_double);
        qsort(ratio, PAIRS, sizeof ratio[0], cmp_double);
        printf("position dependence: median %.2f ms per %ld-token chunk at position 1024, "
               "%.2f ms at %ld+; per-pair time ratio (late/early) median %.3f, quartiles "
               "%.3f..%.3f (%d interleaved pairs)\n",
               ty[PAIRS / 2] * 1e3, chunk, to[PAIRS / 2] * 1e3, total, ratio[PAIRS / 2],
               ratio[PAIRS / 4], ratio[3 * PAIRS / 4], PAIRS);
    }
    state_free(young);
    state_free(young0);
    printf("%s\n", grew ? "FAIL: memory grew" : nonfinite ? "FAIL: state not finite"
                                                           : "ok: constant memory, finite state");
    rc_free(tok);
    state_free(s);
    fwd_free(f);
    model_free(m);
    return grew || nonfinite;
bad:
    usage(stderr);
    return 2;
}
