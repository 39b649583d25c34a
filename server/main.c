/*
 * recurd — a server and toolbox for recurrent language models.
 *
 *   recurd score --model DIR --tokens FILE [--json] [--chunk N]
 *   recurd bench [--model DIR | --random NAME | --config FILE] [--json]
 *   recurd serve --model DIR [--host H] [--port P] ...   (the HTTP server)
 *   recurd soak ...
 *   recurd tokenize --tokenizer FILE|DIR [--json]   (text on stdin -> ids)
 *   recurd detokenize --tokenizer FILE|DIR           (ids on stdin -> text)
 *   recurd version
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"

#include "blas.h"
#include "cli.h"
#include "tools.h"


/* --check-blas: exit 1 if OpenBLAS chose kernels weaker than this CPU's by
 * itself and the re-exec in blas_ensure_fast_kernels did not take. Kernels
 * the user asked for with OPENBLAS_CORETYPE are their decision (some hosts
 * set it because older OpenBLAS builds crash on their CPU): reported, and
 * never a failure. */
static int cmd_version(int argc, char **argv)
{
    char blas[256];
    blas_describe(blas, sizeof blas);
    printf("recurd %s\n%s\n", RECUR_VERSION, blas);
#ifdef RECUR_FAULT_INJECTION
    printf("fault injection: SIGUSR2 (test build)\n");
#endif
    if (argc > 1 && !strcmp(argv[1], "--check-blas")) {
        int have = blas_core_isa(blas_corename()), cpu = blas_cpu_isa();
        if (blas_chosen_by() != BLAS_CHOSEN_USER && have != ISA_UNKNOWN && have < cpu &&
            blas_coretype_for(cpu)) {
            fprintf(stderr, "recurd: OpenBLAS runs %s kernels; this CPU runs better ones\n",
                    blas_corename());
            return 1;
        }
    }
    return 0;
}

/* runs_sgemm: the command calls OpenBLAS's sgemm (bench's reference peak)
 * or answers for the kernels it runs (version --check-blas). Only those
 * re-execute when OpenBLAS chose kernels weaker than the CPU's: nothing else
 * calls OpenBLAS to compute (docs/engine.md, "OpenBLAS"). */
static const struct {
    const char *name;
    int (*fn)(int, char **);
    int runs_sgemm;
    const char *help;
} commands[] = {
    {"serve", cmd_serve, 0, "the HTTP server (recurd serve --help)"},
    {"score", cmd_score, 0, "per-token log-probs and perplexity by position"},
    {"bench", cmd_bench, 1, "prefill/decode throughput against the sgemm peak"},
    {"effrem", cmd_effrem, 0, "Effective Remembrance curve (TV distance with/without the prefix)"},
    {"soak", cmd_soak, 0, "stream N tokens through one session: memory stays constant"},
    {"tokenize", cmd_tokenize, 0, "text on stdin -> token ids (tokenizer.json)"},
    {"detokenize", cmd_detokenize, 0, "token ids on stdin -> text"},
    {"version", cmd_version, 1, "version and the BLAS kernels in use"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: recurd COMMAND [options]   (recurd COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    blas_ensure_thread_count(argv); /* no more OpenBLAS threads than CPUs to run them */
    json_set_alloc_funcs(rc_malloc, rc_free); /* one allocation path (STYLE.md #6) */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    const char *name = strcmp(argv[1], "--version") ? argv[1] : "version";
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(name, commands[i].name)) {
            if (commands[i].runs_sgemm)
                blas_ensure_fast_kernels(argv);
            return commands[i].fn(argc - 1, argv + 1);
        }
    fprintf(stderr, "recurd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
