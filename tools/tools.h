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

int cmd_score(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_soak(int argc, char **argv);
int cmd_effrem(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);

/* Shared helpers (util.c). */

/* Monotonic seconds. */
double now_sec(void);

/* Read a whole file (or "-" for stdin) into a NUL-terminated heap buffer
 * (rc_free it). Caps at max_bytes. Returns 0 or an rc_status with err set. */
int read_file_all(const char *path, size_t max_bytes, char **out, size_t *len, char *err,
                  size_t errlen);

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

#endif
