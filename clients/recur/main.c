/*
 * recur — command-line client of recurd serve.
 *
 *   recur stream FILE [--session ID]        stream a document into a session
 *   recur generate [--session ID] PROMPT    generate, tokens printed as they come
 *   recur sessions [delete ID...]           list / delete sessions
 *   recur snapshot save ID FILE | load FILE snapshots to and from files
 *   recur eval FILE... [--svg OUT] [--effrem]
 *   recur load [-n N] [-m M] ...            load test
 *
 * docs/clients.md is the manual.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "recur.h"

#ifndef RECUR_VERSION
#define RECUR_VERSION "0.1.0"
#endif

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"stream", cmd_stream, "stream a document of any size into a session, with progress"},
    {"generate", cmd_generate, "generate from a prompt or a session, printed as it streams"},
    {"sessions", cmd_sessions, "list sessions; 'sessions delete ID...' deletes"},
    {"snapshot", cmd_snapshot, "'snapshot save ID FILE', 'snapshot load FILE' (new session)"},
    {"eval", cmd_eval, "perplexity by position of files (table, --svg plot, --effrem)"},
    {"load", cmd_load, "load test: N sessions streaming M tokens, G generators"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: recur COMMAND [options]   (recur COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nEvery command takes --url URL (env RECUR_URL or RECURD_URL, default http://127.0.0.1:8080),\n"
               "--api-key KEY (env RECUR_API_KEY or RECURD_API_KEY), --timeout SECONDS (120) and\n"
               "--retry-deadline SECONDS (120: appends and generates are sent again, with one\n"
               "Idempotency-Key, through 503s and lost connections for this long; 0 = never).\n"
               "Exit status: 0 ok, 1 the server said no, 2 usage, 3 server unreachable or\n"
               "timed out, 4 local file error, 5 load test finished with failed requests.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EX_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return EX_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("recur %s (%s)\n", RECUR_VERSION, curl_version());
        return EX_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                msg("cannot initialise libcurl");
                return EX_CONNECT;
            }
            int rc = commands[i].fn(argc - 1, argv + 1);
            curl_global_cleanup();
            return rc;
        }
    msg("unknown command '%s'", argv[1]);
    usage(stderr);
    return EX_USAGE;
}
