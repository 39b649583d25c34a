/*
 * recur stream FILE [--session ID] — stream a document into a session.
 *
 * The server answers a streamed text/plain append only when it ends (no
 * progress events), so the document goes as consecutive chunked appends of
 * about --segment-bytes each, read from the file as they go. After each the
 * reply gives exact tokens and NLL, so the running perplexity is exact at
 * every segment boundary; within a segment the progress shows uploaded
 * bytes (the server pauses the upload while its compute is behind, so they
 * track what has been read to within --upload-buffer-bytes).
 *
 * Segments end only at a cut where tokenisation cannot change: after a
 * '\n' that follows a printable ASCII byte and precedes one. With a
 * byte-level BPE pre-tokeniser (GPT-2/NeoX regex, ours) no pre-token
 * crosses such a point, so the tokens, scores and final state are those of
 * one request over the whole file (tests/clients checks it). A file without
 * such points goes in one request; --segment-bytes 0 forces that.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "recur.h"

void src_init(struct src *s, FILE *f, const char *path, long long seg_target)
{
    memset(s, 0, sizeof *s);
    s->f = f;
    s->path = path;
    s->seg_target = seg_target;
}

static int fill(struct src *s)
{
    if (s->lo < s->hi || s->eof || s->err)
        return s->err ? -1 : 0;
    s->lo = 0;
    s->hi = fread(s->buf, 1, sizeof s->buf, s->f);
    if (s->hi == 0) {
        if (ferror(s->f)) {
            s->err = errno ? errno : EIO;
            return -1;
        }
        s->eof = 1;
    }
    return 0;
}

int src_more(struct src *s)
{
    if (fill(s))
        return -1;
    return s->lo < s->hi;
}

void src_next_segment(struct src *s)
{
    s->seg_sent = 0;
    s->seg_end = 0;
    /* where this segment starts in the file: what is read minus what waits */
    off_t at = ftello(s->f);
    s->mark_ok = at >= 0;
    s->mark_off = (long long)at - (long long)(s->hi - s->lo);
    s->mark_sent = s->sent;
    s->mark_prev1 = s->prev1;
    s->mark_prev2 = s->prev2;
}

int src_rewind_segment(void *ctx)
{
    struct src *s = ctx;
    if (!s->mark_ok || s->err || fseeko(s->f, (off_t)s->mark_off, SEEK_SET))
        return -1;
    clearerr(s->f);
    s->lo = s->hi = 0;
    s->eof = 0;
    s->seg_sent = 0;
    s->seg_end = 0;
    s->sent = s->mark_sent;
    s->prev1 = s->mark_prev1;
    s->prev2 = s->mark_prev2;
    return 0;
}

static int graphic(unsigned char c) { return c > 0x20 && c < 0x7f; }

size_t src_read(char *p, size_t size, size_t n, void *ctx)
{
    struct src *s = ctx;
    size_t room = size * n;
    if (s->seg_end)
        return 0;
    if (fill(s))
        return CURL_READFUNC_ABORT;
    if (s->lo == s->hi)
        return 0; /* end of file */
    size_t limit = s->hi - s->lo;
    int cut = 0;
    if (s->seg_target > 0) {
        if (s->seg_sent < s->seg_target) {
            if ((long long)limit > s->seg_target - s->seg_sent)
                limit = (size_t)(s->seg_target - s->seg_sent);
        } else {
            /* look for the first safe cut at or after lo */
            for (size_t j = s->lo; j < s->hi; j++) {
                unsigned char c = (unsigned char)s->buf[j];
                unsigned char b1 = j >= s->lo + 1 ? (unsigned char)s->buf[j - 1] : s->prev1;
                unsigned char b2 = j >= s->lo + 2   ? (unsigned char)s->buf[j - 2]
                                   : j == s->lo + 1 ? s->prev1
                                                    : s->prev2;
                if (b1 == '\n' && graphic(c) && graphic(b2)) {
                    limit = j - s->lo;
                    cut = 1;
                    break;
                }
            }
        }
    }
    size_t k = limit < room ? limit : room;
    if (cut && k == limit)
        s->seg_end = 1;
    if (k == 0)
        return 0;
    memcpy(p, s->buf + s->lo, k);
    if (k >= 2) {
        s->prev2 = (unsigned char)s->buf[s->lo + k - 2];
        s->prev1 = (unsigned char)s->buf[s->lo + k - 1];
    } else {
        s->prev2 = s->prev1;
        s->prev1 = (unsigned char)s->buf[s->lo];
    }
    s->lo += k;
    s->seg_sent += (long long)k;
    s->sent += (long long)k;
    return k;
}

/* ---- progress ---- */

enum pmode { P_AUTO, P_BAR, P_PLAIN, P_NONE };

struct prog {
    enum pmode mode;
    double t0, last_draw;
    long long size;          /* file size, -1 unknown */
    long long base;          /* bytes of finished segments */
    long long cur_ul;        /* bytes of the current one so far */
    const struct src *src;   /* to tell "uploading" from "server computing" */
    struct score_sum tot;
    int drawn;
};

/* Columns of the terminal stderr is on (TIOCGWINSZ), else $COLUMNS, else
 * 80. Asked at every redraw, so a resized window is followed. */
static int term_columns(void)
{
    struct winsize ws;
    if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    long long v;
    const char *c = getenv("COLUMNS");
    if (c && !parse_ll(c, 1, 10000, &v))
        return (int)v;
    return 80;
}

/* Append "  field" to out (len n of cap) if it fits in width columns (the
 * fields are ASCII: one byte, one column); 0 if it did not. */
static int add_field(char *out, size_t cap, size_t *n, int width, const char *field)
{
    size_t fl = strlen(field), sep = *n ? 2 : 0;
    if (*n + sep + fl > (size_t)width || *n + sep + fl >= cap)
        return 0;
    snprintf(out + *n, cap - *n, "%s%s", sep ? "  " : "", field);
    *n += sep + fl;
    return 1;
}

/* One progress line. bar: for a terminal redraw, at most width - 1
 * columns (a line as wide as the terminal wraps on some terminals, and a
 * wrapped line is not erased by '\r', so every redraw would add a line);
 * fields are dropped from the least useful end to fit, then the bar
 * shrinks or goes. Not bar: a log line (one per segment), never cut. */
static void prog_line(struct prog *g, char *out, size_t cap, int bar, int width)
{
    double el = now_sec() - g->t0;
    long long done = g->base + g->cur_ul;
    char sent[48], toks[48], rate_s[32], ppl[32], eta[48], elapsed[32], b1[24], b2[24];
    fmt_bytes(b1, sizeof b1, (double)done);
    double ratio = g->base > 0 ? (double)g->tot.n_tokens / (double)g->base : 0;
    double tok = (double)g->tot.n_tokens + (double)g->cur_ul * ratio;
    double rate = el > 0 ? tok / el : 0;
    /* the upload of this segment is all sent: the server is reading it */
    int computing = g->src && (g->src->seg_end || g->src->eof) && g->cur_ul > 0;
    if (g->tot.n_scored > 0)
        snprintf(ppl, sizeof ppl, "ppl %.3f", exp(g->tot.nll_sum / (double)g->tot.n_scored));
    else
        snprintf(ppl, sizeof ppl, "ppl -");
    snprintf(toks, sizeof toks, "%s%.0f tokens", g->cur_ul && g->base ? "~" : "", tok);
    snprintf(rate_s, sizeof rate_s, "%.0f tok/s", rate);
    char d_el[24];
    fmt_duration(d_el, sizeof d_el, el);
    snprintf(elapsed, sizeof elapsed, "elapsed %s", d_el);
    double frac = -1;
    if (g->size > 0) {
        frac = (double)done / (double)g->size;
        frac = frac > 1 ? 1 : frac;
        double bps = el > 0 ? (double)done / el : 0;
        char d[32];
        fmt_duration(d, sizeof d, bps > 0 ? (double)(g->size - done) / bps : -1);
        snprintf(eta, sizeof eta, "ETA %s", d);
        fmt_bytes(b2, sizeof b2, (double)g->size);
        snprintf(sent, sizeof sent, "%s/%s", b1, b2);
    } else {
        snprintf(eta, sizeof eta, "%s", "");
        snprintf(sent, sizeof sent, "%s sent", b1);
    }
    if (computing)
        snprintf(eta, sizeof eta, "%s", "server reading");
    if (!bar) {
        if (frac >= 0)
            snprintf(out, cap, "%.0f%% %s  %s  %s  %s  %s  %s", frac * 100, sent, toks, rate_s,
                     ppl, eta, elapsed);
        else
            snprintf(out, cap, "%s  %s  %s  %s  %s", sent, toks, rate_s, ppl, elapsed);
        return;
    }
    int w = width - 1; /* never the last column */
    char pct[8] = "";
    if (frac >= 0)
        snprintf(pct, sizeof pct, "%3.0f%%", frac * 100);
    /* the numbers, most useful first */
    char nums[256];
    size_t nn = 0;
    nums[0] = '\0';
    const char *fields[] = {pct, sent, toks, rate_s, elapsed, ppl, eta};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i][0] && !add_field(nums, sizeof nums, &nn, w, fields[i]))
            break; /* the rest goes: a steady layout, not fields that come and go */
    /* the bar takes what is left, 10 to 30 cells, or is left out */
    int room = w - (int)nn - 3; /* "[" "]" and a space */
    int cells = frac < 0 ? 0 : room > 30 ? 30 : room;
    if (cells >= 10 && cap > (size_t)cells + nn + 4) {
        int fill_n = (int)(frac * cells);
        size_t k = 0;
        out[k++] = '[';
        for (int i = 0; i < cells; i++)
            out[k++] = i < fill_n ? '#' : '.';
        out[k++] = ']';
        out[k++] = ' ';
        snprintf(out + k, cap - k, "%s", nums);
    } else {
        snprintf(out, cap, "%s", nums);
    }
}

static int on_prog(void *ctx, curl_off_t dl, curl_off_t ul)
{
    struct prog *g = ctx;
    g->cur_ul = (long long)ul;
    if (g->mode != P_BAR)
        return 0;
    double t = now_sec();
    if (t - g->last_draw < 0.1)
        return 0;
    g->last_draw = t;
    char line[512];
    prog_line(g, line, sizeof line, 1, term_columns());
    fprintf(stderr, "\r%s\033[K", line);
    g->drawn = 1;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: recur stream FILE [--session ID] [--segment-bytes N] [--progress MODE]\n"
               "                   [--json] [--url URL] [--api-key KEY] [--timeout S]\n"
               "  FILE              a UTF-8 text file, '-' for stdin; read as it is sent\n"
               "  --session ID      append to this session (default: a new one; its id is printed)\n"
               "  --segment-bytes N one append request per ~N bytes (1M; K/M/G; 0 = one request)\n"
               "  --progress MODE   bar, plain (a line per segment) or none; default: bar on a\n"
               "                    terminal, plain otherwise\n"
               "  --json            print the summary as JSON on stdout, and only that there (a new\n"
               "                    session's id is its \"session\"); progress: a bar when\n"
               "                    stderr is a terminal, else none\n"
               "The bar fits the terminal's width (or $COLUMNS).\n");
}

int cmd_stream(int argc, char **argv)
{
    struct conn c;
    conn_init(&c);
    struct argp a;
    argp_init(&a, argc, argv);
    const char *file = NULL, *sid_arg = NULL;
    long long seg = 1 << 20;
    int json = 0, r;
    enum pmode mode = P_AUTO;
    while ((r = argp_next(&a)) >= 0) {
        if (r == 0) {
            if (file) {
                msg("stream: one FILE only (got '%s' too)", a.arg);
                return EX_USAGE;
            }
            file = a.arg;
        } else if (argp_is(&a, "--help", 0) || argp_is(&a, "-h", 0)) {
            usage(stdout);
            return EX_OK;
        } else if (argp_conn(&a, &c)) {
        } else if (argp_is(&a, "--session", 1)) {
            sid_arg = a.val;
        } else if (argp_is(&a, "--segment-bytes", 1)) {
            if (a.val && parse_ll(a.val, 0, 1LL << 40, &seg)) {
                msg("stream: --segment-bytes wants a size, not '%s'", a.val);
                return EX_USAGE;
            }
        } else if (argp_is(&a, "--progress", 1)) {
            if (!a.val)
                ;
            else if (!strcmp(a.val, "bar"))
                mode = P_BAR;
            else if (!strcmp(a.val, "plain"))
                mode = P_PLAIN;
            else if (!strcmp(a.val, "none"))
                mode = P_NONE;
            else {
                msg("stream: --progress is bar, plain or none, not '%s'", a.val);
                return EX_USAGE;
            }
        } else if (argp_is(&a, "--json", 0)) {
            json = 1;
        } else {
            msg("stream: unknown option '%s'", a.arg);
            usage(stderr);
            return EX_USAGE;
        }
        if (a.bad)
            return EX_USAGE;
    }
    if (!file) {
        usage(stderr);
        return EX_USAGE;
    }
    if (sid_arg && check_id("stream", sid_arg))
        return EX_USAGE;
    FILE *f = strcmp(file, "-") ? fopen(file, "rb") : stdin;
    if (!f) {
        msg("stream: cannot open %s: %s", file, strerror(errno));
        return EX_LOCAL;
    }
    struct prog g = {.mode = mode, .size = -1};
    /* --json is for programs: stdout holds the JSON alone, and stderr gets
     * the bar on a terminal, else nothing but errors */
    if (g.mode == P_AUTO)
        g.mode = isatty(2) ? P_BAR : json ? P_NONE : P_PLAIN;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
        g.size = (long long)st.st_size;

    char sid[72];
    int rc = EX_OK;
    if (sid_arg) {
        snprintf(sid, sizeof sid, "%s", sid_arg);
    } else {
        rc = session_create(&c, sid);
        if (rc)
            goto out_file;
        if (!json) { /* with --json the id is the summary's "session" */
            printf("%s\n", sid);
            fflush(stdout);
        }
    }
    static struct src s; /* 64 KiB buffer: not on the stack */
    src_init(&s, f, file, seg);
    g.src = &s;
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/append", sid);
    CURL *h = curl_easy_init();
    if (!h) {
        msg("cannot start libcurl");
        rc = EX_CONNECT;
        goto out_file;
    }
    g.t0 = now_sec();
    int segments = 0;
    for (;;) {
        int more = src_more(&s);
        if (more < 0) {
            msg("stream: reading %s: %s", file, strerror(s.err));
            rc = EX_LOCAL;
            break;
        }
        if (!more)
            break;
        src_next_segment(&s);
        char key[33];
        idem_key_new(key); /* one per segment, kept by its retries */
        struct req q = {.method = "POST", .path = path, .ctype = "text/plain; charset=utf-8",
                        .read = src_read, .read_ctx = &s, .read_len = -1,
                        .progress = on_prog, .progress_ctx = &g, .stream = 1,
                        .idem_key = key};
        struct resp resp;
        g.cur_ul = 0;
        rc = http_do_retry(&c, h, &q, &resp, src_rewind_segment, &s, NULL);
        if (rc == EX_LOCAL || s.err) {
            msg("stream: reading %s: %s", file, strerror(s.err ? s.err : EIO));
            rc = EX_LOCAL;
        } else if (rc == EX_OK) {
            rc = http_check(&resp, "stream: append");
        }
        json_t *j = NULL;
        if (rc == EX_OK) {
            json_error_t je;
            j = json_loadb(resp.body.p ? resp.body.p : "", resp.body.n, JSON_ALLOW_NUL, &je);
            if (!j || score_add(&g.tot, j)) {
                msg("stream: the append reply lacks its totals");
                rc = EX_SERVER;
            }
        }
        json_decref(j);
        buf_free(&resp.body);
        if (rc) {
            if (g.drawn)
                fputc('\n', stderr);
            if (g.tot.n_tokens)
                msg("stream: session %s keeps the %lld tokens read before the failure "
                    "(position %lld)", sid, g.tot.n_tokens, g.tot.position);
            break;
        }
        segments++;
        g.base = s.sent;
        g.cur_ul = 0;
        if (g.mode == P_PLAIN) {
            char line[512];
            prog_line(&g, line, sizeof line, 0, 0);
            fprintf(stderr, "recur: %s\n", line);
        } else if (g.mode == P_BAR) {
            g.last_draw = 0;
            on_prog(&g, 0, 0);
        }
    }
    curl_easy_cleanup(h);
    if (rc == EX_OK) {
        double el = now_sec() - g.t0;
        double ppl = g.tot.n_scored ? exp(g.tot.nll_sum / (double)g.tot.n_scored) : NAN;
        if (g.drawn)
            fputc('\n', stderr);
        if (json) {
            json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:i, s:f}", "session", sid,
                                  "bytes", (json_int_t)s.sent, "n_tokens",
                                  (json_int_t)g.tot.n_tokens, "n_scored",
                                  (json_int_t)g.tot.n_scored, "position",
                                  (json_int_t)g.tot.position, "nll_sum", g.tot.nll_sum,
                                  "seconds", el, "segments", segments, "tokens_per_second",
                                  el > 0 ? (double)g.tot.n_tokens / el : 0.0);
            if (o && g.tot.n_scored) {
                json_object_set_new(o, "nll", json_real(g.tot.nll_sum / (double)g.tot.n_scored));
                json_object_set_new(o, "ppl", json_real(ppl));
            } else if (o) {
                json_object_set_new(o, "nll", json_null());
                json_object_set_new(o, "ppl", json_null());
            }
            char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
            if (!t) {
                msg("out of memory");
                rc = EX_LOCAL;
            } else {
                printf("%s\n", t);
            }
            free(t);
            json_decref(o);
        }
        char b[32], d[32];
        fmt_bytes(b, sizeof b, (double)s.sent);
        fmt_duration(d, sizeof d, el);
        if (!json || g.mode == P_BAR)
            msg("session %s: %s, %lld tokens (%lld scored) in %s (%.1f s, %d append%s), "
                "%.0f tok/s, ppl %.4f, position %lld",
                sid, b, g.tot.n_tokens, g.tot.n_scored, d, el, segments,
                segments == 1 ? "" : "s", el > 0 ? (double)g.tot.n_tokens / el : 0.0, ppl,
                g.tot.position);
    }
out_file:
    if (f != stdin)
        fclose(f);
    return rc;
}
