/*
 * tools.h — recurd's offline subcommands and the small helpers they share.
 *
 * The tools run the engine (core/) in-process, without the server: score,
 * bench, soak, effrem, tokenize/detokenize. Each is
 * `int cmd_NAME(int argc, char **argv)` with argv[0] the subcommand name; it
 * returns the process exit status (0 ok, 1 runtime failure, 2 usage error).
 * server/main.c holds the table, with `serve` (server/cli.h).
 */
#ifndef RECUR_TOOLS_H
#define RECUR_TOOLS_H

#include <stddef.h>
#include <stdint.h>

struct model;

int cmd_score(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_soak(int argc, char **argv);
int cmd_effrem(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

/* Shared helpers (util.c). */

/* What a subcommand's argument parser returns when the command should run;
 * any other value is the exit status (0 after --help, 2 on a usage error). */
#define TOOL_RUN (-1)

/* Monotonic seconds. */
double now_sec(void);

/* Read a whole file (or "-" for stdin) into a NUL-terminated heap buffer
 * (rc_free it). Caps at max_bytes. Returns 0 or an rc_status with err set. */
int read_file_all(const char *path, size_t max_bytes, char **out, size_t *len, char *err,
                  size_t errlen);

/* The next whitespace-separated word at *p as a decimal integer (no '+', under
 * 32 characters, in range of long long): returns 1 with *val set, 0 at the end of
 * the text, -1 when the word is not such an integer. *p moves past the word;
 * word and wlen name it (for messages). */
int next_int_word(const char **p, long long *val, const char **word, size_t *wlen);

/* Parse whitespace-separated token ids. Every id must be an integer in
 * [0, n_vocab); the first bad one is named by index in err. *ids is an
 * rc_malloc'ed array. */
int parse_token_ids(const char *text, int n_vocab, int32_t **ids, size_t *n, char *err,
                    size_t errlen);

/* The ids a subcommand works on: whitespace-separated ids from tokens_path,
 * or the text in text_path (UTF-8; '-' for stdin) encoded with model_dir's
 * tokenizer.json (byte ids if the directory has none). Exactly one of the
 * two paths is non-NULL. Every id is checked against n_vocab. */
int load_input_ids(const char *model_dir, int n_vocab, const char *tokens_path,
                   const char *text_path, int32_t **ids, size_t *n, char *err, size_t errlen);

/* Strict integer option parsing: whole string, in [lo, hi]. */
int parse_long_opt(const char *s, long lo, long hi, long *out);

/* The model a subcommand runs: the weights in dir, or random weights of a
 * named shape (random_name: mamba2-130m, mamba2-370m, mamba-130m) or of a
 * config.json (config_path). Exactly one is non-NULL. */
struct model_source {
    const char *dir, *random_name, *config_path;
    int weights; /* model_load_as's format (MODEL_WEIGHTS_AUTO, ...) */
};

/* --weights NAME: the format into *weights, or a message on stderr and -1. */
int parse_weights_opt(const char *tool, const char *name, int *weights);
#define WEIGHTS_HELP                                                                          \
    "  --weights W       weights in memory: auto (default: bf16 when that is exact,\n"          \
    "                    else fp32), fp32, bf16, int8\n"

/* Loads or creates src's model (random weights drawn from seed) into *m
 * (model_free it). Returns 0 or an rc_status with err set; *m is NULL then. */
int open_model(const struct model_source *src, uint64_t seed, struct model **m, char *err,
               size_t errlen);

/* The model in dir and the ids to run it on (load_input_ids, checked against
 * the model's n_vocab). On failure nothing is left open. */
int open_model_and_input(const char *dir, int weights, const char *tokens_path,
                         const char *text_path, struct model **m, int32_t **ids, size_t *n, char *err, size_t errlen);

/* The next id of a pseudo-random token stream in [0, n_vocab): a 64-bit LCG
 * whose state the caller seeds, so each run reads the same tokens. */
int32_t random_token(uint64_t *rng, int n_vocab);

#endif
