/*
 * batch.h — planning one tick: which rows each ready job puts into the
 * next forward pass. A pure function over a small description of the
 * ready jobs, so that its rules can be tested without a model.
 *
 * The rules, in order:
 *  - Decode rows first (latency): each generating job, in the order given
 *    (the compute thread rotates it every tick for fairness), takes one
 *    row per choice still generating, one token each, while the tick's
 *    token budget and the decode scratch last.
 *  - Then prefill chunks, in the same order, from what budget is left: a
 *    job reading input takes min(input left, prefill_chunk) tokens, and
 *    only whole: a chunk that does not fit the budget waits for the next
 *    tick (later, smaller chunks may still go), and a job whose input is
 *    still arriving waits until a whole prefill_chunk is there. A stream's
 *    chunks thus depend only on its own tokens, never on the batch or on
 *    how an upload arrived: the engine rounds differently for different
 *    chunkings, and this keeps a streamed upload scoring exactly like the
 *    same text sent at once.
 */
#ifndef RECUR_BATCH_H
#define RECUR_BATCH_H

#include <stddef.h>

struct batch_limits {
    int batch_tokens;    /* tokens per tick, decode and prefill together */
    int prefill_chunk;   /* input tokens per job per tick (<= batch_tokens) */
    int max_decode_rows; /* decode rows the tick's scratch holds */
};

/* One ready job as the planner sees it. */
struct batch_want {
    int decode_rows;   /* choices generating, each wanting a row (0: none) */
    size_t input_left; /* input tokens known and not yet read */
    int input_eof;     /* no more input will come */
};

/* What the planner gave it. */
struct batch_take {
    int decode_rows;   /* the first decode_rows of its generating choices */
    int prefill;       /* input tokens to read this tick (0: none) */
};

/* Plan a tick for want[0..n) into take[0..n). Returns the tokens planned
 * (at most batch_tokens). */
int batch_plan(const struct batch_limits *lim, const struct batch_want *want, int n,
               struct batch_take *take);

/* The prefill chunk a job would take with an unlimited budget (0: none,
 * it waits for more input). */
int batch_prefill_chunk(const struct batch_limits *lim, const struct batch_want *w);

#endif
