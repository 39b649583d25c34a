#include "options.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "model.h"

extern char **environ;

enum opt_type { T_STR, T_LONG, T_SIZE, T_SECS, T_FLAG, T_KEYS, T_ORIGINS, T_WEIGHTS };

struct opt {
    const char *flag;   /* "--port" */
    const char *env;    /* "RECURD_PORT" */
    int type;
    size_t off;         /* offsetof(struct options, field) */
    const char *def;    /* default, parsed like user input; NULL = unset */
    double lo, hi;      /* numeric bounds (inclusive) */
    const char *help;   /* what it is, and why the default */
};

#define O(f) offsetof(struct options, f)
#define KiB 1024.0
#define MiB (1024.0 * 1024)
#define GiB (1024.0 * 1024 * 1024)

static const struct opt opts[] = {
    {"--model", "RECURD_MODEL", T_STR, O(model_dir), NULL, 0, 0,
     "model directory (config.json, *.safetensors, tokenizer.json); required"},
    {"--host", "RECURD_HOST", T_STR, O(host), "127.0.0.1", 0, 0,
     "listen address; loopback by default so nothing is exposed by accident"},
    {"--port", "RECURD_PORT", T_LONG, O(port), "8080", 0, 65535,
     "listen port; 0 picks a free one and logs it"},
    {"--api-key", "RECURD_API_KEY", T_KEYS, O(api_keys), NULL, 0, 0,
     "Bearer key(s), comma-separated or repeated; each key owns its sessions; none = no auth"},
    {"--metrics-public", "RECURD_METRICS_PUBLIC", T_FLAG, O(metrics_public), "0", 0, 1,
     "serve /metrics without a key (scrapers often cannot send one); off by default"},
    {"--max-body-bytes", "RECURD_MAX_BODY_BYTES", T_SIZE, O(max_body_bytes), "64M", 1024,
     16 * GiB,
     "JSON and snapshot bodies (a 370m snapshot is ~49 MiB); streamed text/plain appends are not capped"},
    {"--max-json-depth", "RECURD_MAX_JSON_DEPTH", T_LONG, O(max_json_depth), "32", 2, 1000,
     "JSON nesting; our bodies need 3, a low cap bounds hostile input"},
    {"--max-text-bytes", "RECURD_MAX_TEXT_BYTES", T_SIZE, O(max_text_bytes), "16M", 1, 16 * GiB,
     "one text field in a JSON body; longer documents stream as text/plain"},
    {"--max-input-tokens", "RECURD_MAX_INPUT_TOKENS", T_LONG, O(max_input_tokens), "1048576", 1,
     1e9, "token ids in one JSON array"},
    {"--max-gen-tokens", "RECURD_MAX_GEN_TOKENS", T_LONG, O(max_gen_tokens), "131072", 1, 1e9,
     "ceiling for max_tokens; the state is constant-size, so long generations are cheap"},
    {"--max-top-logprobs", "RECURD_MAX_TOP_LOGPROBS", T_LONG, O(max_top_logprobs), "20", 0, 64,
     "alternatives per token (OpenAI allows 20)"},
    {"--detail-limit", "RECURD_DETAIL_LIMIT", T_LONG, O(detail_limit), "4096", 0, 1e8,
     "per-token entries in one response; totals still cover every token"},
    {"--max-stop", "RECURD_MAX_STOP", T_LONG, O(max_stop), "8", 0, 64,
     "stop sequences per request"},
    {"--max-stop-bytes", "RECURD_MAX_STOP_BYTES", T_SIZE, O(max_stop_bytes), "256", 1, 65536,
     "bytes of one stop sequence"},
    {"--max-n", "RECURD_MAX_N", T_LONG, O(max_n), "16", 1, 128,
     "choices (n) of one completion; each holds a state of its own (counted in --state-memory)"},
    {"--max-sessions", "RECURD_MAX_SESSIONS", T_LONG, O(max_sessions), "4096", 1, 1e7,
     "sessions in the table (live or spilled)"},
    {"--max-sessions-per-key", "RECURD_MAX_SESSIONS_PER_KEY", T_LONG, O(max_sessions_per_key),
     "1024", 1, 1e7, "sessions one API key may hold (429 beyond)"},
    {"--state-memory", "RECURD_STATE_MEMORY", T_SIZE, O(state_memory), "4G", 4096, 4096 * GiB,
     "bytes of recurrent state kept in memory; beyond it idle sessions spill to --state-dir, or new ones get 503"},
    {"--session-ttl", "RECURD_SESSION_TTL", T_SECS, O(session_ttl), "3600", 1, 1e9,
     "idle seconds before a session is deleted"},
    {"--state-dir", "RECURD_STATE_DIR", T_STR, O(state_dir), NULL, 0, 0,
     "where idle states spill and where live sessions persist on shutdown; off by default (writes files)"},
    {"--snapshot-dir", "RECURD_SNAPSHOT_DIR", T_STR, O(snapshot_dir), NULL, 0, 0,
     "named server-side snapshots; off by default (writes files)"},
    {"--max-snapshots-per-key", "RECURD_MAX_SNAPSHOTS_PER_KEY", T_LONG,
     O(max_snapshots_per_key), "64", 1, 1e6,
     "named snapshots one API key may hold (429 beyond), so one key cannot fill the disk"},
    {"--snapshot-disk-reserve", "RECURD_SNAPSHOT_DISK_RESERVE", T_SIZE, O(snapshot_disk_reserve),
     "256M", 0, 1024 * 1024 * GiB,
     "free bytes a named snapshot must leave on its disk, besides room to spill every state in memory when --state-dir shares it (507 beyond)"},
    {"--max-connections", "RECURD_MAX_CONNECTIONS", T_LONG, O(max_connections), "512", 1, 65536,
     "open HTTP connections"},
    {"--max-connections-per-ip", "RECURD_MAX_CONNECTIONS_PER_IP", T_LONG,
     O(max_connections_per_ip), "128", 1, 65536,
     "open connections from one address, so one client cannot take them all"},
    {"--connection-timeout", "RECURD_CONNECTION_TIMEOUT", T_SECS, O(connection_timeout), "60", 1,
     86400, "idle seconds before a connection is closed; also the most a request's headers may take, however they trickle (slowloris)"},
    {"--header-bytes", "RECURD_HEADER_BYTES", T_SIZE, O(header_bytes), "32K", 4096, 16 * MiB,
     "memory for one connection's request line and headers (larger gets 431/413)"},
    {"--stream-buffer-bytes", "RECURD_STREAM_BUFFER_BYTES", T_SIZE, O(stream_buffer_bytes), "1M",
     4096, 1 * GiB, "unsent output of one streaming response; generation pauses above it"},
    {"--upload-buffer-bytes", "RECURD_UPLOAD_BUFFER_BYTES", T_SIZE, O(upload_buffer_bytes),
     "256K", 4096, 1 * GiB,
     "received but unprocessed text of one streamed append; the upload pauses above it"},
    {"--drain-timeout", "RECURD_DRAIN_TIMEOUT", T_SECS, O(drain_timeout), "30", 0, 86400,
     "on SIGTERM, seconds to let in-flight requests finish before cancelling them"},
    {"--reuse-port", "RECURD_REUSE_PORT", T_FLAG, O(reuse_port), "0", 0, 1,
     "share the port with other processes (SO_REUSEPORT); off, so a second server on a busy port fails instead of getting half the connections"},
    {"--min-body-rate", "RECURD_MIN_BODY_RATE", T_SIZE, O(min_body_rate), "1K", 0, 1 * GiB,
     "bytes/s a request body must average once the grace is over (408 below); 0 = off; bounds a trickled body, which the idle timeout never cuts"},
    {"--min-body-rate-grace", "RECURD_MIN_BODY_RATE_GRACE", T_SECS, O(min_body_rate_grace), "10",
     0, 86400, "seconds a request body may take before --min-body-rate applies (slow starts, small bodies)"},
    {"--cors-origin", "RECURD_CORS_ORIGIN", T_ORIGINS, O(cors_origins), NULL, 0, 0,
     "browser origin(s) allowed to call the API (CORS), comma-separated or repeated, e.g. https://app.example; * = any; none by default"},
    {"--prefill-chunk", "RECURD_PREFILL_CHUNK", T_LONG, O(prefill_chunk), "256", 1, 65536,
     "tokens one session reads per scheduler tick; bounds others' decode latency"},
    {"--batch-tokens", "RECURD_BATCH_TOKENS", T_LONG, O(batch_tokens), "1024", 1, 1 << 20,
     "tokens per scheduler tick over all sessions (sizes the compute scratch)"},
    {"--threads", "RECURD_THREADS", T_LONG, O(threads), "0", 0, 1024,
     "compute threads (the forward pass's pool, the compute thread included); 0 = the CPUs "
     "this process may use (affinity mask, cgroup CPU quota)"},
    {"--weights", "RECURD_WEIGHTS", T_WEIGHTS, O(weights), "auto", 0, 0,
     "projection, embedding and lm_head weights in memory: auto (bf16 when that changes no "
     "weight, as for bf16 checkpoints, else fp32: always exact), fp32, bf16 (rounds fp32/fp16 "
     "weights), int8 (blocks of 32, quantized at load: about half the bytes of bf16; its "
     "accuracy cost is in docs/engine.md)"},
    {"--store", "RECURD_STORE", T_STR, O(store), NULL, 0, 0,
     "redis://HOST:PORT[/DB]: sessions durable in Redis, shared by replicas (docs/cluster.md); "
     "every change is acknowledged only once Redis has it; off by default (one process)"},
    {"--replica-id", "RECURD_REPLICA_ID", T_STR, O(replica_id), NULL, 0, 0,
     "this replica's name in leases and X-Recurd-Replica ([A-Za-z0-9._:-], at most 64); "
     "default: hostname-port; must be unique among the replicas"},
    {"--lease-ms", "RECURD_LEASE_MS", T_LONG, O(lease_ms), "5000", 300, 600000,
     "a session's lease in the store, renewed every third of it; a dead replica's sessions "
     "move after at most this long"},
    {"--store-snapshot-tokens", "RECURD_STORE_SNAPSHOT_TOKENS", T_LONG,
     O(store_snapshot_tokens), "8192", 1, 1e9,
     "logged tokens after which a snapshot replaces a session's log (bounds a restore's replay)"},
    {"--store-snapshot-secs", "RECURD_STORE_SNAPSHOT_SECS", T_SECS, O(store_snapshot_secs), "30",
     0.1, 86400, "... or seconds after the first token the snapshot does not hold"},
    {"--store-timeout-ms", "RECURD_STORE_TIMEOUT_MS", T_LONG, O(store_timeout_ms), "2000", 10,
     600000, "one store call; past it the call counts as failed (503, never half-acknowledged)"},
    {"--store-audit", "RECURD_STORE_AUDIT", T_FLAG, O(store_audit), "0", 0, 1,
     "record every commit (epoch, replica, positions) in the store, for fencing tests"},
    {"--quiet", "RECURD_QUIET", T_FLAG, O(quiet), "0", 0, 1, "no per-request log lines"},
};

#define N_OPTS (sizeof opts / sizeof opts[0])

int options_parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0))
        return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = KiB, end++;
    else if (*end == 'M' || *end == 'm')
        mul = MiB, end++;
    else if (*end == 'G' || *end == 'g')
        mul = GiB, end++;
    if (*end == 'i' && mul > 1)
        end++; /* accept KiB-style "Ki", "Mi" */
    if (*end == 'B' && mul >= 1)
        end++;
    if (*end)
        return -1;
    v *= mul;
    if (v > 9.0e18 || v != floor(v))
        return -1;
    *out = (size_t)v;
    return 0;
}

static int set_str(char **dst, const char *val, char *err, size_t errlen)
{
    char *d = rc_strdup(val);
    if (!d)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    rc_free(*dst);
    *dst = d;
    return 0;
}

/* Appends the comma-separated keys in val. A new source replaces keys from a
 * weaker one, but repeated --api-key flags add up: the caller clears between
 * sources. */
static int add_api_keys(struct options *c, const struct opt *o, const char *val, char *err,
                        size_t errlen)
{
    const char *p = val;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n > 0) {
            if (c->n_api_keys == OPTIONS_MAX_KEYS)
                return rc_fail(err, errlen, RC_ERANGE, "%s: more than %d keys", o->flag,
                               OPTIONS_MAX_KEYS);
            if (n > 512)
                return rc_fail(err, errlen, RC_EINVAL, "%s: a key is longer than 512 bytes",
                               o->flag);
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)p[i] <= ' ' || (unsigned char)p[i] >= 0x7f)
                    return rc_fail(err, errlen, RC_EINVAL,
                                   "%s: keys must be printable ASCII without spaces", o->flag);
            char *k = rc_strndup(p, n);
            if (!k)
                return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
            c->api_keys[c->n_api_keys++] = k;
        }
        p += n + (comma ? 1 : 0);
    }
    return 0;
}

/* Whether p[0:n) is "*" or scheme://host[:port]: printable, no path, at most
 * 256 bytes. */
static int is_origin(const char *p, size_t n)
{
    int ok = n <= 256 && (n == 1 ? *p == '*' : 1);
    for (size_t i = 0; i < n && ok; i++)
        ok = (unsigned char)p[i] > ' ' && (unsigned char)p[i] < 0x7f;
    const char *sep = ok && n > 1 ? strstr(p, "://") : NULL;
    if (n > 1 && (!sep || sep >= p + n || sep == p ||
                  memchr(sep + 3, '/', (size_t)(p + n - (sep + 3))) || sep + 3 == p + n))
        ok = 0;
    return ok;
}

/* Appends the comma-separated origins in val, spaces around each trimmed;
 * like add_api_keys: repeated flags add up, a stronger source replaces. */
static int add_cors_origins(struct options *c, const struct opt *o, const char *val, char *err,
                            size_t errlen)
{
    const char *p = val;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        while (n > 0 && *p == ' ')
            p++, n--;
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n > 0) {
            if (c->n_cors_origins == OPTIONS_MAX_ORIGINS)
                return rc_fail(err, errlen, RC_ERANGE, "%s: more than %d origins", o->flag,
                               OPTIONS_MAX_ORIGINS);
            if (!is_origin(p, n))
                return rc_fail(err, errlen, RC_EINVAL,
                               "%s: '%.*s' is not an origin (scheme://host[:port], or *)",
                               o->flag, (int)(n > 80 ? 80 : n), p);
            char *k = rc_strndup(p, n);
            if (!k)
                return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
            c->cors_origins[c->n_cors_origins++] = k;
        }
        p += n;
        while (*p == ' ')
            p++;
        if (*p == ',')
            p++;
    }
    return 0;
}

static int set_flag(int *dst, const struct opt *o, const char *val, char *err, size_t errlen)
{
    if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes"))
        *dst = 1;
    else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no"))
        *dst = 0;
    else
        return rc_fail(err, errlen, RC_EINVAL, "%s: expected 1/0/true/false, got '%s'", o->flag,
                       val);
    return 0;
}

static int set_long(long *dst, const struct opt *o, const char *val, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (errno || end == val || *end || v < o->lo || v > o->hi)
        return rc_fail(err, errlen, RC_EINVAL, "%s: expected an integer in [%.0f, %.0f], got '%s'",
                       o->flag, o->lo, o->hi, val);
    *dst = (long)v;
    return 0;
}

static int set_size(size_t *dst, const struct opt *o, const char *val, char *err, size_t errlen)
{
    size_t v;
    if (options_parse_size(val, &v) != 0 || v < o->lo || v > o->hi)
        return rc_fail(err, errlen, RC_EINVAL,
                       "%s: expected a size in [%.0f, %.0f] bytes (K/M/G suffixes), got '%s'",
                       o->flag, o->lo, o->hi, val);
    *dst = v;
    return 0;
}

static int set_secs(double *dst, const struct opt *o, const char *val, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= o->lo && v <= o->hi))
        return rc_fail(err, errlen, RC_EINVAL, "%s: expected seconds in [%g, %g], got '%s'",
                       o->flag, o->lo, o->hi, val);
    *dst = v;
    return 0;
}

/* Parses val as option o's type into its field of c. */
static int set_opt(struct options *c, const struct opt *o, const char *val, char *err,
                   size_t errlen)
{
    void *field = (char *)c + o->off;
    switch (o->type) {
    case T_STR:
        /* an empty value of an optional path or URL (RECURD_STATE_DIR= in
         * an image that sets it) means unset, not "the empty path" */
        if (!*val && !o->def) {
            rc_free(*(char **)field);
            *(char **)field = NULL;
            return 0;
        }
        return set_str(field, val, err, errlen);
    case T_KEYS: return add_api_keys(c, o, val, err, errlen);
    case T_ORIGINS: return add_cors_origins(c, o, val, err, errlen);
    case T_FLAG: return set_flag(field, o, val, err, errlen);
    case T_LONG: return set_long(field, o, val, err, errlen);
    case T_SIZE: return set_size(field, o, val, err, errlen);
    case T_SECS: return set_secs(field, o, val, err, errlen);
    case T_WEIGHTS: {
        int w = model_weights_parse(val);
        if (w == -2)
            return rc_fail(err, errlen, RC_EINVAL,
                           "%s: expected auto, fp32, bf16 or int8, got '%s'", o->flag, val);
        *(int *)field = w;
        return 0;
    }
    }
    return RC_EINVAL;
}

static void clear_keys(struct options *c)
{
    for (int i = 0; i < c->n_api_keys; i++) {
        /* keys are secrets: do not leave them in freed memory */
        volatile char *k = c->api_keys[i];
        for (size_t j = 0; k[j]; j++)
            k[j] = 0;
        rc_free(c->api_keys[i]);
        c->api_keys[i] = NULL;
    }
    c->n_api_keys = 0;
}

static void clear_origins(struct options *c)
{
    for (int i = 0; i < c->n_cors_origins; i++) {
        rc_free(c->cors_origins[i]);
        c->cors_origins[i] = NULL;
    }
    c->n_cors_origins = 0;
}

static void print_help(FILE *f)
{
    fprintf(f, "usage: recurd serve --model DIR [options]\n\n"
               "Every option can also be set by its environment variable; the command line wins.\n\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        fprintf(f, "  %-28s %-30s default: %s\n      %s\n", o->flag, o->env,
                o->def ? o->def : "(unset)", o->help);
    }
}

void options_print_markdown(FILE *f)
{
    fprintf(f, "| option | environment | default | what and why |\n|---|---|---|---|\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const struct opt *o = &opts[i];
        fprintf(f, "| `%s` | `%s` | %s%s%s | %s |\n", o->flag, o->env, o->def ? "`" : "",
                o->def ? o->def : "unset", o->def ? "`" : "", o->help);
    }
}

static const char *env_get(char **env, const char *name)
{
    size_t n = strlen(name);
    for (char **e = env; e && *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

int options_load(struct options *c, int argc, char **argv, char **env, FILE *out, char *err,
                size_t errlen)
{
    int rc;
    memset(c, 0, sizeof *c);
    if (!env)
        env = environ;
    for (size_t i = 0; i < N_OPTS; i++)
        if (opts[i].def && (rc = set_opt(c, &opts[i], opts[i].def, err, errlen)))
            goto fail;
    for (size_t i = 0; i < N_OPTS; i++) {
        const char *v = env_get(env, opts[i].env);
        if (v && (rc = set_opt(c, &opts[i], v, err, errlen)))
            goto fail;
    }
    int keys_from_argv = 0, origins_from_argv = 0;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            print_help(out);
            options_free(c);
            return 1;
        }
        if (!strcmp(arg, "--help-markdown")) {
            options_print_markdown(out);
            options_free(c);
            return 1;
        }
        const struct opt *o = NULL;
        const char *val = NULL;
        for (size_t i = 0; i < N_OPTS && !o; i++) {
            size_t n = strlen(opts[i].flag);
            if (!strncmp(arg, opts[i].flag, n) && (arg[n] == 0 || arg[n] == '=')) {
                o = &opts[i];
                val = arg[n] == '=' ? arg + n + 1 : NULL;
            }
        }
        if (!o) {
            rc = rc_fail(err, errlen, RC_EINVAL, "unknown option '%s' (see --help)", arg);
            goto fail;
        }
        if (!val) {
            if (o->type == T_FLAG)
                val = "1";
            else if (a + 1 < argc)
                val = argv[++a];
            else {
                rc = rc_fail(err, errlen, RC_EINVAL, "%s needs a value", o->flag);
                goto fail;
            }
        }
        if (o->type == T_KEYS && !keys_from_argv) {
            clear_keys(c);
            keys_from_argv = 1;
        }
        if (o->type == T_ORIGINS && !origins_from_argv) {
            clear_origins(c);
            origins_from_argv = 1;
        }
        if ((rc = set_opt(c, o, val, err, errlen)))
            goto fail;
    }
    if (!c->model_dir) {
        rc = rc_fail(err, errlen, RC_EINVAL, "--model DIR is required (or RECURD_MODEL)");
        goto fail;
    }
    return 0;
fail:
    options_free(c);
    return rc;
}

void options_free(struct options *c)
{
    if (!c)
        return;
    clear_keys(c);
    clear_origins(c);
    for (size_t i = 0; i < N_OPTS; i++)
        if (opts[i].type == T_STR) {
            char **p = (char **)((char *)c + opts[i].off);
            rc_free(*p);
            *p = NULL;
        }
}
