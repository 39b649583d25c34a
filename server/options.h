/*
 * options.h — every option of `recurd serve`: its flag, its environment
 * variable, its default and the one-line reason for that default.
 *
 * One table (options.c) drives parsing, --help and the options table in
 * docs/server.md (`recurd serve --help-markdown` prints it; a test checks
 * the doc matches). Precedence: default < environment < command line.
 * Sizes accept K/M/G suffixes (powers of 1024); times are seconds.
 */
#ifndef RECUR_OPTIONS_H
#define RECUR_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OPTIONS_MAX_KEYS 16
#define OPTIONS_MAX_ORIGINS 16

struct options {
    /* where */
    char *model_dir;        /* required */
    char *host;             /* listen address (numeric IPv4/IPv6) */
    long port;              /* 0 = any free port (printed at start-up) */
    /* auth */
    char *api_keys[OPTIONS_MAX_KEYS]; /* Bearer keys; none = no auth */
    int n_api_keys;
    int metrics_public;     /* /metrics without a key */
    /* request limits */
    size_t max_body_bytes;  /* JSON and snapshot bodies */
    long max_json_depth;
    size_t max_text_bytes;  /* one text field in JSON */
    long max_input_tokens;  /* ids in one JSON array */
    long max_gen_tokens;    /* max_tokens ceiling */
    long max_top_logprobs;
    long detail_limit;      /* per-token entries in one response */
    long max_stop;
    size_t max_stop_bytes;
    long max_n;             /* choices of one completion (n) */
    /* sessions */
    long max_sessions;
    long max_sessions_per_key;
    size_t state_memory;    /* bytes of live states */
    double session_ttl;     /* idle seconds before a session expires */
    char *state_dir;        /* spill + persist on shutdown; NULL = off */
    char *snapshot_dir;     /* named snapshots; NULL = off */
    long max_snapshots_per_key;  /* named snapshots one key may hold */
    size_t snapshot_disk_reserve; /* free bytes a named save must leave */
    /* connections */
    long max_connections;
    long max_connections_per_ip;
    double connection_timeout;
    size_t header_bytes;    /* per-connection header memory */
    size_t stream_buffer_bytes;  /* unsent output per streaming response */
    size_t upload_buffer_bytes;  /* untokenised upload per session */
    double drain_timeout;
    int reuse_port;         /* SO_REUSEPORT: several processes on one port */
    size_t min_body_rate;   /* bytes/s a request body must average; 0 = off */
    double min_body_rate_grace; /* seconds before min_body_rate applies */
    /* browsers */
    char *cors_origins[OPTIONS_MAX_ORIGINS]; /* allowed Origins; "*" = any */
    int n_cors_origins;
    /* compute */
    long prefill_chunk;     /* tokens per session per tick */
    long batch_tokens;      /* tokens per tick, all sessions */
    long threads;           /* BLAS threads; 0 = all cores */
    int weights;            /* --weights: MODEL_WEIGHTS_AUTO or an enum wfmt */
    /* cluster (--store) */
    char *store;            /* redis://HOST:PORT[/DB]; NULL = off */
    char *replica_id;       /* this replica's name; NULL = hostname-port */
    long lease_ms;          /* session lease TTL */
    long store_snapshot_tokens; /* logged tokens before a snapshot replaces the log */
    double store_snapshot_secs; /* ... or seconds after the first of them */
    long store_timeout_ms;  /* one store call */
    int store_audit;        /* record every commit (tests) */
    /* logging */
    int quiet;              /* no per-request lines */
};

/* Defaults, then RECURD_* variables from env (NULL = the process
 * environment), then argv (argv[0] is the subcommand name). Returns 0, 1
 * when --help/--help-markdown was printed to out, or a negative rc_status
 * with err naming the option. */
int options_load(struct options *c, int argc, char **argv, char **env, FILE *out, char *err,
                size_t errlen);
void options_free(struct options *c);

/* Print the options as a Markdown table (docs/server.md). */
void options_print_markdown(FILE *f);

/* Parse "16M"-style sizes and plain numbers: 0 or -1. */
int options_parse_size(const char *s, size_t *out);

#endif
