/*
 * recur eval FILE... — perplexity by position through the server.
 *
 * Each file is streamed into a fresh session as one chunked text/plain
 * append; the reply's buckets ([0,1), [1,2), [2,4), ...) give the curve.
 * Printed as a table (one column per file, then the token-weighted mean:
 * exp(sum n*nll / sum n) per bucket) and, with --svg, drawn as a plot (x:
 * log2 of the position, y: perplexity on a log scale).
 *
 * --effrem: Effective Remembrance (Buitrago Ruiz & Gu, 2025) of the first
 * file, EffRem_T(t) = TV(q(.|x[0:T]), q(.|x[t:T])), for t = k*T/P. The
 * server exposes only the top 20 log-probabilities of a next-token
 * distribution, so the TV is given as bounds, both exact consequences of
 * the known entries (docs/clients.md derives them):
 *   lower = max over A in {S_p, S_q, {i in both: p_i > q_i}} of what
 *           |P(A) - Q(A)| must at least be,
 *   upper = 1 - sum over i in S_p and S_q of min(p_i, q_i).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recur.h"

#define MAXB 48

struct curve {
    const char *path;
    long long n[MAXB];
    double nll[MAXB];
    int nb;
    struct score_sum tot;
};

static int bucket_index(long long start)
{
    int k = 0;
    while (start > 0 && k < MAXB - 1) {
        start >>= 1;
        k++;
    }
    return k; /* [0,1) -> 0, [1,2) -> 1, [2,4) -> 2, ... */
}

static int eval_file(const struct conn *c, struct curve *cv)
{
    FILE *f = fopen(cv->path, "rb");
    if (!f) {
        msg("eval: cannot open %s: %s", cv->path, strerror(errno));
        return EX_LOCAL;
    }
    char sid[40], path[128];
    int rc = session_create(c, sid);
    if (rc) {
        fclose(f);
        return rc;
    }
    static struct src s;
    src_init(&s, f, cv->path, 0);
    snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
    struct req q = {.method = "POST", .path = path, .ctype = "text/plain; charset=utf-8",
                    .read = src_read, .read_ctx = &s, .read_len = -1, .stream = 1};
    struct resp r;
    rc = http_do(c, NULL, &q, &r);
    if (rc == EX_LOCAL || s.err) {
        msg("eval: reading %s: %s", cv->path, strerror(s.err ? s.err : EIO));
        rc = EX_LOCAL;
    } else if (rc == EX_OK) {
        rc = http_check(&r, "eval: append");
    }
    fclose(f);
    if (rc == EX_OK) {
        json_error_t je;
        json_t *j = json_loadb(r.body.p ? r.body.p : "", r.body.n, JSON_ALLOW_NUL, &je);
        json_t *bs = json_object_get(j, "buckets");
        if (!j || score_add(&cv->tot, j) || !json_is_array(bs)) {
            msg("eval: %s: the reply lacks its scores", cv->path);
            rc = EX_SERVER;
        } else {
            size_t i;
            json_t *b;
            json_array_foreach(bs, i, b) {
                int k = bucket_index(json_integer_value(json_object_get(b, "start")));
                long long n = json_integer_value(json_object_get(b, "n"));
                cv->n[k] += n;
                cv->nll[k] += n * json_number_value(json_object_get(b, "nll"));
                cv->nb = k + 1 > cv->nb ? k + 1 : cv->nb;
            }
        }
        json_decref(j);
    }
    buf_free(&r.body);
    int d = session_delete(c, sid);
    return rc ? rc : d;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void bucket_label(int k, char *out, size_t cap)
{
    if (k == 0)
        snprintf(out, cap, "[0, 1)");
    else
        snprintf(out, cap, "[%lld, %lld)", 1LL << (k - 1), 1LL << k);
}

/* ---- SVG ---- */

static const char *colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default:
            if ((unsigned char)*s >= 0x20)
                fputc(*s, f);
        }
    }
}

static int write_svg(const char *out, struct curve *cv, int nf, const double *mean_ppl, int nb)
{
    FILE *f = fopen(out, "w");
    if (!f) {
        msg("eval: cannot write %s: %s", out, strerror(errno));
        return EX_LOCAL;
    }
    const double W = 760, H = 460, L = 70, R = 190, T = 30, B = 60;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < nf; i++)
        for (int k = 0; k < nb; k++)
            if (cv[i].n[k]) {
                double y = log10(exp(cv[i].nll[k] / (double)cv[i].n[k]));
                lo = y < lo ? y : lo;
                hi = y > hi ? y : hi;
            }
    if (!(lo <= hi)) {
        lo = 0;
        hi = 1;
    }
    lo = floor(lo * 10) / 10;
    hi = ceil(hi * 10) / 10;
    if (hi - lo < 0.2)
        hi = lo + 0.2;
    int xmax = nb > 1 ? nb - 1 : 1;
#define X(k) (L + (W - L - R) * (double)(k) / xmax)
#define Y(v) (T + (H - T - B) * (1 - ((v) - lo) / (hi - lo)))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">"
               "perplexity by position</text>\n", (L + W - R) / 2);
    /* y grid: 1, 2, 5 x 10^k within range */
    for (int e = (int)floor(lo) - 1; e <= (int)ceil(hi); e++)
        for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) {
            double v = log10(m) + e;
            if (v < lo - 1e-9 || v > hi + 1e-9)
                continue;
            fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                       "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                    L, W - R, Y(v), Y(v), L - 6, Y(v) + 4, pow(10, v));
        }
    for (int k = 0; k <= xmax; k++) {
        char lab[32];
        if (k == 0)
            snprintf(lab, sizeof lab, "1");
        else if (k < 11)
            snprintf(lab, sizeof lab, "%lld", 1LL << k);
        else
            snprintf(lab, sizeof lab, "2^%d", k);
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                X(k), X(k), T, H - B, X(k), H - B + 16, lab);
    }
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
               "stroke=\"black\"/>\n", L, T, W - L - R, H - T - B);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">position (end of bucket, "
               "log2 scale)</text>\n", (L + W - R) / 2, H - 18);
    fprintf(f, "<text transform=\"translate(18 %.0f) rotate(-90)\" text-anchor=\"middle\">"
               "perplexity (log scale)</text>\n", (T + H - B) / 2);
    for (int i = 0; i <= nf; i++) {
        int is_mean = i == nf;
        if (is_mean && nf < 2)
            break;
        const char *col = is_mean ? "black" : colors[i % 10];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\"%s points=\"", col,
                is_mean ? "2.5" : "1.5", is_mean ? " stroke-dasharray=\"6 3\"" : "");
        for (int k = 0; k < nb; k++) {
            double p = is_mean ? mean_ppl[k]
                       : cv[i].n[k] ? exp(cv[i].nll[k] / (double)cv[i].n[k]) : NAN;
            if (isfinite(p) && p > 0)
                fprintf(f, "%.1f,%.1f ", X(k), Y(log10(p)));
        }
        fprintf(f, "\"/>\n");
        double ly = T + 10 + 18 * i;
        fprintf(f, "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                   "stroke-width=\"2\"/><text x=\"%.0f\" y=\"%.0f\">", W - R + 12, W - R + 36,
                ly, ly, col, W - R + 42, ly + 4);
        xml_text(f, is_mean ? "mean" : base_name(cv[i].path));
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
#undef X
#undef Y
    if (fclose(f) != 0) {
        msg("eval: writing %s: %s", out, strerror(errno));
        return EX_LOCAL;
    }
    return EX_OK;
}

/* ---- Effective Remembrance ---- */

struct topk {
    int n;
    long long id[64];
    double p[64];
};

static int next_dist(const struct conn *c, json_t *ids, size_t from, size_t to, struct topk *d)
{
    char sid[40], path[128];
    int rc = session_create(c, sid);
    if (rc)
        return rc;
    json_t *sl = json_array(), *out = NULL;
    for (size_t i = from; sl && i < to; i++)
        json_array_append(sl, json_array_get(ids, i));
    json_t *body = sl ? json_pack("{s:o}", "tokens", sl) : NULL;
    snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
    rc = body ? call_json(c, "POST", path, body, &out) : EX_LOCAL;
    json_decref(body);
    json_decref(out);
    out = NULL;
    if (!rc) {
        body = json_pack("{s:i, s:f, s:b, s:i, s:b, s:b}", "max_tokens", 1, "temperature", 0.0,
                         "logprobs", 1, "top_logprobs", 20, "commit", 0, "ignore_eos", 1);
        snprintf(path, sizeof path, "/v1/sessions/%s/generate", sid);
        rc = body ? call_json(c, "POST", path, body, &out) : EX_LOCAL;
        json_decref(body);
    }
    if (!rc) {
        json_t *tl = json_object_get(json_array_get(json_object_get(out, "logprobs"), 0),
                                     "top_logprobs");
        size_t i;
        json_t *e;
        d->n = 0;
        json_array_foreach(tl, i, e) {
            if (d->n < 64) {
                d->id[d->n] = json_integer_value(json_object_get(e, "id"));
                d->p[d->n++] = exp(json_number_value(json_object_get(e, "logprob")));
            }
        }
        if (!d->n) {
            msg("eval --effrem: the server returned no top_logprobs");
            rc = EX_SERVER;
        }
    }
    json_decref(out);
    int dr = session_delete(c, sid);
    return rc ? rc : dr;
}

static double find(const struct topk *d, long long id)
{
    for (int i = 0; i < d->n; i++)
        if (d->id[i] == id)
            return d->p[i];
    return -1;
}

/* Bounds on TV(p, q) from top-k lists (see the header comment). */
static void tv_bounds(const struct topk *p, const struct topk *q, double *lo, double *hi)
{
    double pmin = 1, qmin = 1, pmass = 0, qmass = 0;
    for (int i = 0; i < p->n; i++) {
        pmin = p->p[i] < pmin ? p->p[i] : pmin;
        pmass += p->p[i];
    }
    for (int i = 0; i < q->n; i++) {
        qmin = q->p[i] < qmin ? q->p[i] : qmin;
        qmass += q->p[i];
    }
    double common_min = 0, up = 0, q_on_sp = 0, p_on_sq = 0;
    int p_only = 0, q_only = 0;
    for (int i = 0; i < p->n; i++) {
        double qi = find(q, p->id[i]);
        if (qi >= 0) {
            common_min += fmin(p->p[i], qi);
            up += p->p[i] > qi ? p->p[i] - qi : 0;
            q_on_sp += qi;
        } else {
            p_only++;
        }
    }
    for (int i = 0; i < q->n; i++) {
        double pi = find(p, q->id[i]);
        if (pi >= 0)
            p_on_sq += pi;
        else
            q_only++;
    }
    /* an id missing from q's top-k has q_i <= qmin, and all of them together <= 1 - qmass */
    double q_sp_hi = q_on_sp + fmin(p_only * qmin, 1 - qmass);
    double p_sq_hi = p_on_sq + fmin(q_only * pmin, 1 - pmass);
    double l = up; /* A = {common ids with p_i > q_i}: exact */
    l = fmax(l, pmass - q_sp_hi);
    l = fmax(l, qmass - p_sq_hi);
    *lo = fmax(0, l);
    *hi = fmin(1, 1 - common_min);
}

static int effrem(const struct conn *c, const char *file, const long long *Ts, int nT, int P,
                  json_t *report)
{
    long long maxT = 0;
    for (int i = 0; i < nT; i++)
        maxT = Ts[i] > maxT ? Ts[i] : maxT;
    FILE *f = fopen(file, "rb");
    if (!f) {
        msg("eval: cannot open %s: %s", file, strerror(errno));
        return EX_LOCAL;
    }
    size_t cap = (size_t)maxT * 32 + 4096, n = 0;
    if (cap > (8u << 20))
        cap = 8u << 20;
    char *text = malloc(cap + 1);
    if (!text) {
        fclose(f);
        msg("out of memory");
        return EX_LOCAL;
    }
    n = fread(text, 1, cap, f);
    int full = n == cap;
    fclose(f);
    if (full) { /* do not cut a character or a word */
        size_t cut = n;
        while (cut > 0 && text[cut - 1] != '\n')
            cut--;
        n = cut ? cut : n;
    }
    text[n] = 0;
    json_t *body = json_pack("{s:s%}", "text", text, n), *tok = NULL;
    free(text);
    int rc = body ? call_json(c, "POST", "/v1/tokenize", body, &tok) : EX_LOCAL;
    json_decref(body);
    if (rc)
        return rc;
    json_t *ids = json_object_get(tok, "tokens");
    size_t nt = json_array_size(ids);
    json_t *jT = json_array();
    printf("\nEffective Remembrance of %s: TV(q(.|x[0:T]), q(.|x[t:T])) from the server's "
           "top-20 log-probs, as [lower, upper] bounds\n", base_name(file));
    for (int ti = 0; !rc && ti < nT; ti++) {
        long long T = Ts[ti];
        if ((size_t)T > nt) {
            msg("eval --effrem: T=%lld skipped: %s has only %zu tokens", T, file, nt);
            continue;
        }
        struct topk ref;
        rc = next_dist(c, ids, 0, (size_t)T, &ref);
        json_t *pts = json_array();
        printf("\n| T=%lld | t/T | TV lower | TV upper |\n|---:|---:|---:|---:|\n", T);
        for (int k = 0; !rc && k < P; k++) {
            long long t = k * T / P;
            double lo = 0, hi = 0;
            if (t > 0) {
                struct topk d;
                rc = next_dist(c, ids, (size_t)t, (size_t)T, &d);
                if (rc)
                    break;
                tv_bounds(&ref, &d, &lo, &hi);
            }
            printf("| %lld | %.3f | %.4f | %.4f |\n", t, (double)t / (double)T, lo, hi);
            json_array_append_new(pts, json_pack("{s:I, s:f, s:f}", "t", (json_int_t)t,
                                                 "tv_lower", lo, "tv_upper", hi));
        }
        json_array_append_new(jT, json_pack("{s:I, s:o}", "T", (json_int_t)T, "points", pts));
        fflush(stdout);
    }
    json_object_set_new(report, "effrem", json_pack("{s:s, s:i, s:o}", "file", file, "top_k",
                                                    20, "curves", jT));
    json_decref(tok);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: recur eval FILE... [--svg OUT] [--json OUT] [--effrem [--T 256,1024] "
               "[--points 8]]\n"
               "  perplexity by position bucket of each file (a fresh session each), a table\n"
               "  with the token-weighted mean; --svg draws it (log2 x, log y)\n"
               "  --effrem     Effective Remembrance curve of the first file for each T\n"
               "  --T LIST     context lengths (256,1024); --points P: t = k*T/P (8)\n"
               "  --json OUT   the numbers as JSON ('-' for stdout)\n"
               "  --url, --api-key, --timeout (see recur --help)\n");
}

int cmd_eval(int argc, char **argv)
{
    struct conn c;
    conn_init(&c);
    struct argp a;
    argp_init(&a, argc, argv);
    const char *svg = NULL, *json_out = NULL;
    int do_eff = 0, r, nf = 0;
    long long Ts[16] = {256, 1024}, P = 8;
    int nT = 2;
    static struct curve cv[64];
    memset(cv, 0, sizeof cv);
    while ((r = argp_next(&a)) >= 0) {
        if (r == 0) {
            if (nf == 64) {
                msg("eval: at most 64 files");
                return EX_USAGE;
            }
            cv[nf++].path = a.arg;
        } else if (argp_is(&a, "--help", 0) || argp_is(&a, "-h", 0)) {
            usage(stdout);
            return EX_OK;
        } else if (argp_conn(&a, &c)) {
        } else if (argp_is(&a, "--svg", 1)) {
            svg = a.val;
        } else if (argp_is(&a, "--json", 1)) {
            json_out = a.val;
        } else if (argp_is(&a, "--effrem", 0)) {
            do_eff = 1;
        } else if (argp_is(&a, "--points", 1)) {
            if (a.val && parse_ll(a.val, 1, 256, &P)) {
                msg("eval: --points wants 1..256");
                return EX_USAGE;
            }
        } else if (argp_is(&a, "--T", 1)) {
            if (a.val) {
                char tmp[256], *save = NULL;
                snprintf(tmp, sizeof tmp, "%s", a.val);
                nT = 0;
                for (char *s = strtok_r(tmp, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
                    if (nT == 16 || parse_ll(s, 2, 1 << 20, &Ts[nT])) {
                        msg("eval: --T wants up to 16 comma-separated lengths in [2, 1M]");
                        return EX_USAGE;
                    }
                    nT++;
                }
                if (!nT) {
                    msg("eval: --T is empty");
                    return EX_USAGE;
                }
            }
        } else {
            msg("eval: unknown option '%s'", a.arg);
            usage(stderr);
            return EX_USAGE;
        }
        if (a.bad)
            return EX_USAGE;
    }
    if (!nf) {
        usage(stderr);
        return EX_USAGE;
    }
    int rc = EX_OK;
    for (int i = 0; !rc && i < nf; i++)
        rc = eval_file(&c, &cv[i]);
    if (rc)
        return rc;
    int nb = 0;
    for (int i = 0; i < nf; i++)
        nb = cv[i].nb > nb ? cv[i].nb : nb;
    double mean[MAXB];
    json_t *report = json_object(), *jfiles = json_array(), *jmean = json_array();
    printf("| position |");
    for (int i = 0; i < nf; i++)
        printf(" %.24s |", base_name(cv[i].path));
    printf(" mean |\n|---|");
    for (int i = 0; i <= nf; i++)
        printf("---:|");
    printf("\n");
    for (int k = 0; k < nb; k++) {
        char lab[48];
        bucket_label(k, lab, sizeof lab);
        printf("| %s |", lab);
        double sn = 0, snll = 0;
        for (int i = 0; i < nf; i++) {
            if (cv[i].n[k]) {
                printf(" %.3f |", exp(cv[i].nll[k] / (double)cv[i].n[k]));
                sn += (double)cv[i].n[k];
                snll += cv[i].nll[k];
            } else {
                printf(" - |");
            }
        }
        mean[k] = sn > 0 ? exp(snll / sn) : NAN;
        printf(" %.3f |\n", mean[k]);
        json_array_append_new(jmean, json_pack("{s:I, s:I, s:f}", "start",
                                               (json_int_t)(k ? 1LL << (k - 1) : 0), "end",
                                               (json_int_t)(1LL << k),
                                               "ppl", sn > 0 ? mean[k] : 0.0));
    }
    printf("| all |");
    double an = 0, anll = 0;
    for (int i = 0; i < nf; i++) {
        struct score_sum *t = &cv[i].tot;
        printf(" %.3f |", t->n_scored ? exp(t->nll_sum / (double)t->n_scored) : NAN);
        an += (double)t->n_scored;
        anll += t->nll_sum;
        json_t *bk = json_array();
        for (int k = 0; k < cv[i].nb; k++)
            if (cv[i].n[k])
                json_array_append_new(bk, json_pack("{s:I, s:I, s:I, s:f, s:f}", "start",
                                                    (json_int_t)(k ? 1LL << (k - 1) : 0),
                                                    "end", (json_int_t)(1LL << k), "n",
                                                    (json_int_t)cv[i].n[k], "nll",
                                                    cv[i].nll[k] / (double)cv[i].n[k], "ppl",
                                                    exp(cv[i].nll[k] / (double)cv[i].n[k])));
        json_array_append_new(jfiles, json_pack("{s:s, s:I, s:I, s:f, s:o}", "file", cv[i].path,
                                                "n_tokens", (json_int_t)t->n_tokens, "n_scored",
                                                (json_int_t)t->n_scored, "nll_sum", t->nll_sum,
                                                "buckets", bk));
    }
    printf(" %.3f |\n", an > 0 ? exp(anll / an) : NAN);
    fflush(stdout);
    json_object_set_new(report, "files", jfiles);
    json_object_set_new(report, "mean", jmean);
    if (svg) {
        rc = write_svg(svg, cv, nf, mean, nb);
        if (!rc)
            msg("eval: plot written to %s", svg);
    }
    if (!rc && do_eff)
        rc = effrem(&c, cv[0].path, Ts, nT, (int)P, report);
    if (!rc && json_out) {
        FILE *f = strcmp(json_out, "-") ? fopen(json_out, "w") : stdout;
        if (!f || json_dumpf(report, f, JSON_INDENT(2)) != 0 || fputc('\n', f) == EOF ||
            (f != stdout && fclose(f) != 0)) {
            msg("eval: cannot write %s: %s", json_out, strerror(errno));
            rc = EX_LOCAL;
        }
    }
    json_decref(report);
    return rc;
}
