/*
 * recurd tokenize   --tokenizer FILE|DIR [--json] [--no-special] [--max-pending BYTES]
 * recurd tokenize   --tokenizer FILE|DIR --bench TEXTFILE [--seconds S]
 * recurd detokenize --tokenizer FILE|DIR [--skip-special] [--json]
 *
 * tokenize: UTF-8 text on stdin -> ids on stdout, space separated, one line (or
 * {"ids":[...],"n_tokens":N} with --json). Input streams through the streaming
 * encoder in 64 KiB reads, so it may be any size; invalid UTF-8 becomes U+FFFD
 * (see core/tokenizer.h). detokenize: whitespace-separated ids on stdin -> text,
 * written as it is decoded (never half a character); with --json, once at the
 * end as {"text":"...","n_tokens":N} (the shape of POST /v1/detokenize's
 * answer, plus the count), so a failure leaves stdout empty.
 * A DIR argument means a model directory: DIR/tokenizer.json, or the byte-level
 * fallback when the directory has none.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "tools.h"
#include "errors.h"
#include "tokenizer.h"

static int load_tokenizer(const char *path, tokenizer_t **tok)
{
    char err[512];
    struct stat st;
    int rc, fallback = 0;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        rc = tokenizer_load_dir(path, tok, &fallback, err, sizeof err);
    else
        rc = tokenizer_load_file(path, tok, err, sizeof err);
    if (rc) {
        fprintf(stderr, "recurd: %s\n", err);
        return 1;
    }
    if (fallback)
        fprintf(stderr, "recurd: %s has no tokenizer.json: using byte ids\n", path);
    return 0;
}

static void print_ids(const int32_t *ids, size_t n, size_t *printed)
{
    for (size_t i = 0; i < n; i++)
        printf(*printed + i ? " %d" : "%d", (int)ids[i]);
    *printed += n;
}

static int bench_tokenizer(const tokenizer_t *tok, const char *path, double seconds);

/* Streams stdin through an encoder in 64 KiB reads, printing the ids as they
 * come (inside {"ids":[...],"n_tokens":N} with json). Returns the exit status. */
static int encode_stdin(const tokenizer_t *tok, const struct tok_encoder_opts *opts, int json)
{
    char err[512];
    tok_encoder_t *enc;
    if (tok_encoder_create(tok, opts, &enc, err, sizeof err)) {
        fprintf(stderr, "recurd: %s\n", err);
        return 1;
    }
    size_t printed = 0, n;
    int rc = 0;
    static char buf[1 << 16];
    if (json)
        printf("{\"ids\":[");
    for (;;) {
        size_t got = fread(buf, 1, sizeof buf, stdin);
        rc = got ? tok_encoder_feed(enc, buf, got, err, sizeof err)
                 : tok_encoder_finish(enc, err, sizeof err);
        if (rc)
            break;
        const int32_t *ids = tok_encoder_ids(enc, &n);
        if (json) {
            for (size_t i = 0; i < n; i++)
                printf(printed + i ? ",%d" : "%d", (int)ids[i]);
            printed += n;
        } else {
            print_ids(ids, n, &printed);
        }
        tok_encoder_take(enc, n);
        if (!got)
            break;
    }
    if (!rc && ferror(stdin)) {
        snprintf(err, sizeof err, "read error on stdin");
        rc = RC_EIO;
    }
    if (json)
        printf("],\"n_tokens\":%zu}", printed);
    printf("\n");
    if (rc)
        fprintf(stderr, "recurd: %s\n", err);
    tok_encoder_free(enc);
    return rc ? 1 : 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL, *bench_file = NULL;
    int json = 0;
    double seconds = 3.0;
    struct tok_encoder_opts opts = {0, 0};
    for (int i = 1; i < argc; i++) {
        long v;
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--no-special"))
            opts.flags |= TOK_ENCODE_NO_SPECIAL;
        else if (!strcmp(argv[i], "--max-pending") && i + 1 < argc &&
                 !parse_long_opt(argv[i + 1], 256, 1L << 40, &v)) {
            opts.max_pending = (size_t)v;
            i++;
        } else if (!strcmp(argv[i], "--bench") && i + 1 < argc)
            bench_file = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc &&
                 !parse_long_opt(argv[i + 1], 1, 3600, &v)) {
            seconds = (double)v;
            i++;
        } else {
            fprintf(stderr, "usage: recurd tokenize --tokenizer FILE|DIR [--json] [--no-special] "
                            "[--max-pending BYTES]  < text\n"
                            "       recurd tokenize --tokenizer FILE|DIR --bench TEXTFILE "
                            "[--seconds S]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (!path) {
        fprintf(stderr, "recurd tokenize: --tokenizer is required\n");
        return 2;
    }
    tokenizer_t *tok;
    if (load_tokenizer(path, &tok))
        return 1;
    if (bench_file) {
        int rc = bench_tokenizer(tok, bench_file, seconds);
        tokenizer_free(tok);
        return rc;
    }
    int rc = encode_stdin(tok, &opts, json);
    tokenizer_free(tok);
    return rc;
}

/* --json: the text gathers here (the decoder hands out whole characters
 * only, so it stays UTF-8), printed only once all of it decoded */
struct text_buf {
    char *p;
    size_t n, cap;
};

static int text_buf_append(struct text_buf *b, const char *s, size_t len, char *err,
                           size_t errlen)
{
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len)
            cap *= 2;
        char *p = rc_realloc(b->p, cap);
        if (!p)
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    return 0;
}

/* Feeds ids[0:n_ids) and the final flush through dec: the text goes to
 * stdout as it comes, or into acc when acc is non-NULL. */
static int decode_ids(tok_decoder_t *dec, const int32_t *ids, size_t n_ids, struct text_buf *acc,
                      char *err, size_t errlen)
{
    int rc = 0;
    for (size_t i = 0, last = 0; !rc && !last; i++) {
        const char *s;
        size_t len;
        last = i == n_ids;
        rc = last ? tok_decoder_flush(dec, &s, &len)
                  : tok_decoder_feed(dec, ids[i], &s, &len, err, errlen);
        if (rc && last)
            rc_fail(err, errlen, rc, "%s", rc_strerror(rc));
        if (rc || !len)
            continue;
        if (!acc)
            fwrite(s, 1, len, stdout);
        else
            rc = text_buf_append(acc, s, len, err, errlen);
    }
    return rc;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *path = NULL;
    unsigned flags = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--skip-special"))
            flags |= TOK_DECODE_SKIP_SPECIAL;
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else {
            fprintf(stderr, "usage: recurd detokenize --tokenizer FILE|DIR [--skip-special] "
                            "[--json] < ids\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (!path) {
        fprintf(stderr, "recurd detokenize: --tokenizer is required\n");
        return 2;
    }
    tokenizer_t *tok;
    if (load_tokenizer(path, &tok))
        return 1;
    char err[512], *text = NULL;
    size_t len, n_ids = 0;
    int32_t *ids = NULL;
    tok_decoder_t *dec = NULL;
    int rc = read_file_all("-", (size_t)1 << 32, &text, &len, err, sizeof err);
    if (!rc)
        rc = parse_token_ids(text, tokenizer_vocab_size(tok), &ids, &n_ids, err, sizeof err);
    if (!rc)
        rc = tok_decoder_create(tok, flags, &dec, err, sizeof err);
    struct text_buf acc = {0};
    if (!rc)
        rc = decode_ids(dec, ids, n_ids, json ? &acc : NULL, err, sizeof err);
    json_t *out = NULL;
    if (!rc && json) {
        out = json_pack("{s:s%,s:I}", "text", acc.p ? acc.p : "", acc.n, "n_tokens",
                        (json_int_t)n_ids);
        char *dump = out ? json_dumps(out, JSON_COMPACT) : NULL;
        if (!dump)
            rc = rc_fail(err, sizeof err, RC_ENOMEM, "out of memory (or text not UTF-8)");
        else
            printf("%s\n", dump);
        rc_free(dump);
    }
    json_decref(out);
    rc_free(acc.p);
    if (rc)
        fprintf(stderr, "recurd: %s\n", err);
    tok_decoder_free(dec);
    rc_free(ids);
    rc_free(text);
    tokenizer_free(tok);
    return rc ? 1 : 0;
}

/* Encode and decode rates on one core, best of repeated runs within a time budget
 * (the machine is shared: the best run is the least disturbed one). */
static int bench_tokenizer(const tokenizer_t *tok, const char *path, double seconds)
{
    char err[512], *text;
    size_t len;
    if (read_file_all(path, (size_t)1 << 31, &text, &len, err, sizeof err)) {
        fprintf(stderr, "recurd: %s\n", err);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    double best_enc = 1e30, best_dec = 1e30, best_stream = 1e30, t_end;
    int runs = 0;
    double t0 = now_sec();
    t_end = t0 + seconds;
    do {
        rc_free(ids);
        double a = now_sec();
        if (tokenizer_encode(tok, text, len, 0, &ids, &n, err, sizeof err)) {
            fprintf(stderr, "recurd: %s\n", err);
            rc_free(text);
            return 1;
        }
        double b = now_sec();
        char *out;
        size_t olen;
        if (tokenizer_decode(tok, ids, n, 0, &out, &olen, err, sizeof err)) {
            fprintf(stderr, "recurd: %s\n", err);
            rc_free(text);
            rc_free(ids);
            return 1;
        }
        double c = now_sec();
        rc_free(out);
        /* The server's path: 64 KiB chunks through a streaming encoder. */
        tok_encoder_t *enc;
        size_t total = 0, k;
        if (tok_encoder_create(tok, NULL, &enc, err, sizeof err)) {
            fprintf(stderr, "recurd: %s\n", err);
            rc_free(text);
            rc_free(ids);
            return 1;
        }
        for (size_t off = 0; off < len; off += 65536) {
            size_t m = len - off < 65536 ? len - off : 65536;
            tok_encoder_feed(enc, text + off, m, err, sizeof err);
            tok_encoder_ids(enc, &k);
            total += k;
            tok_encoder_take(enc, k);
        }
        tok_encoder_finish(enc, err, sizeof err);
        tok_encoder_ids(enc, &k);
        total += k;
        tok_encoder_free(enc);
        double d = now_sec();
        if (total != n)
            fprintf(stderr, "recurd: streaming gave %zu ids, one-shot %zu\n", total, n);
        if (b - a < best_enc)
            best_enc = b - a;
        if (c - b < best_dec)
            best_dec = c - b;
        if (d - c < best_stream)
            best_stream = d - c;
        runs++;
    } while (now_sec() < t_end);
    printf("tokenizer: %s\n", tokenizer_describe(tok));
    printf("text: %s, %zu bytes -> %zu ids (%.2f bytes/id), best of %d runs\n", path, len, n,
           n ? (double)len / (double)n : 0.0, runs);
    printf("encode  %8.2f MB/s  (%.3f s)\n", (double)len / best_enc / 1e6, best_enc);
    printf("stream  %8.2f MB/s  (64 KiB feeds)\n", (double)len / best_stream / 1e6);
    printf("decode  %8.2f MB/s  %8.2f M ids/s\n", (double)len / best_dec / 1e6,
           (double)n / best_dec / 1e6);
    rc_free(ids);
    rc_free(text);
    return 0;
}
