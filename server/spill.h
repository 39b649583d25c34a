/*
 * spill.h — the state directory (--state-dir): idle sessions' states on
 * disk.
 *
 *   - Above 90% of --state-memory, the least recently used idle sessions
 *     are written out (snapshot format, "<id>.<owner>.state") and their
 *     states freed, down to 75%.
 *   - A request for a spilled session waits while its state is read back,
 *     then runs as if nothing happened (the file is removed once read).
 *   - On shutdown every live session is written out; on start-up the
 *     files of this model are registered as spilled sessions again (same
 *     ids, same owners), so sessions survive restarts. Files made by
 *     another model are left alone (logged).
 * Encoding and file I/O run on libuv's worker pool; the loop thread only
 * keeps the books. Off unless --state-dir is given.
 */
#ifndef RECUR_SPILL_H
#define RECUR_SPILL_H

#include <stddef.h>

struct app;
struct session;

/* Spill if over the high-water mark (no-op without a state dir). */
void spill_check(struct app *a);
/* Start reading s's state back (s->spilled, !s->io). 0 or RC_ENOMEM. */
int spill_restore(struct app *a, struct session *s);
/* Start-up: register the sessions found in the state dir. */
void spill_load_index(struct app *a);
/* Shutdown (nothing running): write every live session out, blocking. */
size_t spill_persist_all(struct app *a); /* returns the sessions it could not write */
/* sessions_opts.on_drop_spilled: remove a dropped session's file. */
void spill_drop_file(void *ud, const struct session *s);

#endif
