/*
 * cluster.h — a replica among several: sessions durable in Redis
 * (--store), the loop thread's side. rstore.h does the Redis calls; this
 * file queues them on libuv's worker pool (fileio.c), keeps the session
 * table in step with what the store says, and owns the timers and the
 * handoff listener. docs/cluster.md tells the design; in short:
 *
 *   - A replica serves a session only while it holds the session's lease
 *     (Redis, PX --lease-ms, renewed every third of it). A request for a
 *     session it does not hold takes the lease (if free), reads the
 *     snapshot and the log, checks them and replays the log through the
 *     compute thread; while another replica holds it, the answer is 503 +
 *     Retry-After and the holder is asked (pub/sub) to hand it off.
 *   - Every change to a session is acknowledged only once it is committed
 *     in Redis under the lease (one script: lease, expected position,
 *     append, advance); a commit that fails leaves this replica's copy
 *     unknown, so it is dropped, and the next request reads the store.
 *   - Snapshots replace the log every --store-snapshot-tokens tokens or
 *     --store-snapshot-secs seconds, on handoff, on drain and when memory
 *     is short (then the state is freed and the lease given up).
 *
 * Everything here runs on the loop thread, except the ops' run functions.
 */
#ifndef RECUR_CLUSTER_H
#define RECUR_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

struct app;
struct session;
struct mstate;
struct job;
struct rstore_entry;
struct outbuf;

/* This replica's id (X-Recurd-Replica), or NULL without a store. */
const char *cluster_replica(const struct app *a);
/* Open the store (parse --store, --replica-id); 0 or -1 after logging. */
int cluster_open(struct app *a);
/* The model is loaded: key names, lease timer, handoff listener. */
void cluster_start(struct app *a);
/* Stop timers and the listener (before the loop ends). */
void cluster_stop(struct app *a);
/* After the loop: free the store. */
void cluster_free(struct app *a);

/* A record for a session this replica does not hold: spilled, to be
 * acquired from the store by cluster_restore (wait_for calls it). NULL when
 * the table is full. */
struct session *cluster_placeholder(struct app *a, const char *id, uint64_t owner);
/* Acquire s from the store: lease, fetch, verify, replay. 0 or RC_ENOMEM. */
int cluster_restore(struct app *a, struct session *s);

/* An async store op and its result, for the requests that wait on one. */
struct cop;
typedef void (*cop_done_fn)(struct app *a, struct cop *op);
struct cop_result {
    int rc;                 /* 0 or rc_status */
    char err[384];
    int64_t cur_pos;        /* RC_ECONFLICT: where the store has the session */
    char *body;             /* idem lookup: the stored answer (owned by the op) */
    size_t body_len;
    struct rstore_entry *list; /* listing (owned by the op) */
    size_t n_list;
};
/* What a waiting request needs of its op: the result, and its own pointer
 * (ud), cleared by cop_detach when the request goes away first. */
const struct cop_result *cop_result(const struct cop *op);
void *cop_ud(const struct cop *op);
struct job *cop_job(const struct cop *op);
struct session *cop_session(const struct cop *op);
void cop_detach(struct cop *op);

/* Commit n ids read into s (its job j, if any, is kept with the op) at
 * s->store_pos, with the answer under an idempotency key's hash (idem
 * NULL: none). On success s->store_pos advances; on failure s is marked
 * to be dropped once idle. done gets the op; NULL when it could not be
 * queued (then nothing happened: RC_ENOMEM). */
struct cop *cluster_commit_log(struct app *a, struct session *s, struct job *j,
                               const int32_t *ids, size_t n, const char *idem,
                               const char *answer, size_t answer_len, cop_done_fn done,
                               void *ud);
/* Store s's whole state (st, read on a worker while s is busy): a new
 * session (create = 1) or one whose state was replaced (PUT state). */
struct cop *cluster_commit_state(struct app *a, struct session *s, struct job *j,
                                 const struct mstate *st, int create, cop_done_fn done,
                                 void *ud);
/* The stored answer of an idempotency key on session sid (RC_ENOENT: none). */
struct cop *cluster_idem_lookup(struct app *a, const char *sid, const char *idem,
                                cop_done_fn done, void *ud);
/* Delete s from the store (under its lease). */
struct cop *cluster_delete(struct app *a, struct session *s, cop_done_fn done, void *ud);
/* The owner's sessions across the cluster. */
struct cop *cluster_list(struct app *a, uint64_t owner, cop_done_fn done, void *ud);

/* Checkpoints, lost leases, handoffs and memory pressure: called after
 * anything that may make a session idle or memory short (spill_check). */
void cluster_check(struct app *a);
/* sessions_opts.can_make_room (ud = the app): idle held sessions can
 * leave memory for a new state. */
int cluster_can_make_room(void *ud);
/* Sessions idle past --session-ttl leave this replica (snapshotted, the
 * lease given up); the store keeps them. */
void cluster_expire(struct app *a);
/* Shutdown (nothing running): every dirty session snapshotted, every
 * lease released, blocking. Returns the sessions that could not be. */
size_t cluster_persist_all(struct app *a);

/* The store's metrics, appended to /metrics' text. */
int cluster_metrics_render(const struct app *a, struct outbuf *out); /* 0 or RC_ENOMEM */

#endif
