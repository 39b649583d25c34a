/*
 * fileio.h — disk work off the loop thread: the one path by which named
 * snapshots (h_sessions.c) and spilled session states (spill.c) reach
 * libuv's worker pool.
 *
 * An op embeds a struct fileio and queues it with fileio_queue(): `run`
 * does the blocking part on a worker thread (store_* calls, encoding,
 * decoding), touching only the op; `done` runs on the loop thread
 * afterwards and owns the op again (it frees it). When libuv cancels the
 * work, `run` is skipped and `done` gets cancelled = 1. Ops are never
 * cancelled by this code, but a loop torn down with work queued would.
 *
 *     struct saveop { struct fileio io; ... };
 *     static void save_run(struct fileio *io) { struct saveop *op = FILEIO_OP(io, struct saveop); ... }
 */
#ifndef RECUR_FILEIO_H
#define RECUR_FILEIO_H

#include <stddef.h>
#include <uv.h>

struct fileio;
typedef void (*fileio_run_fn)(struct fileio *io);
typedef void (*fileio_done_fn)(struct fileio *io, int cancelled);

struct fileio {
    uv_work_t w;               /* libuv's request; w.data = this */
    fileio_run_fn run;         /* worker thread */
    fileio_done_fn done;       /* loop thread, exactly once when queued */
};

/* The op that embeds io as `member`. */
#define FILEIO_OP(io, type, member) ((type *)(void *)((char *)(io) - offsetof(type, member)))

/* Queue io. 0, or RC_EIO when libuv refuses it: then neither callback
 * runs and the caller still owns the op. */
int fileio_queue(uv_loop_t *loop, struct fileio *io, fileio_run_fn run, fileio_done_fn done);

#endif
