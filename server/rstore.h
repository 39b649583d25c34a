/*
 * rstore.h — sessions durable in Redis (--store redis://HOST:PORT[/DB]):
 * the blocking calls, one per store operation, each one round trip (a Lua
 * script, so that what it checks and what it writes are one atomic step in
 * Redis). Key layout and what each call promises: docs/cluster.md.
 *
 * Called from libuv's worker threads (cluster.c queues them through
 * fileio.c) and, at shutdown, from the loop thread. Each thread keeps its
 * own connection (thread-local, made on first use, dropped on any error
 * and made again by the next call), so calls never share a socket and
 * never lock. Every command has --store-timeout-ms to answer; a timeout or
 * a lost connection is RC_EUNAVAILABLE: the caller cannot know whether a
 * write happened, and treats its copy of the session as unknown.
 *
 * Keys never hold client bytes: session ids are 32 checked hex digits,
 * owners 16 hex digits of a hash, idempotency keys an XXH3-128 hex digest.
 *
 *   recurd:<fp>:{<sid>}:meta       hash: owner pos epoch snap snap_pos log_pos
 *                                  created fenced commits
 *   recurd:<fp>:{<sid>}:lease      "<replica> <epoch>", PX = lease
 *   recurd:<fp>:{<sid>}:snap:<e>.<n>  snapshot bytes (proto/SNAPSHOT.md), immutable
 *   recurd:<fp>:{<sid>}:log        list of log entries since the snapshot
 *   recurd:<fp>:{<sid>}:idem:<h>   a stored answer, 24 h
 *   recurd:<fp>:{<sid>}:audit      "epoch replica from to" per commit (--store-audit)
 *   recurd:<fp>:owner:<owner>      set of the owner's session ids
 *   channel recurd:<fp>:handoff    "<holder> <sid>": hand this session off
 *
 * A log entry (little-endian): "RLG1", u32 n, i64 start position, u32
 * epoch, u32 0, n x i32 token ids, u64 XXH3-64 of everything before it.
 */
#ifndef RECUR_RSTORE_H
#define RECUR_RSTORE_H

#include <stddef.h>
#include <stdint.h>

#define RSTORE_REPLICA_MAX 64
#define RSTORE_LOG_HEADER 24u
#define RSTORE_LOG_TRAILER 8u
#define RSTORE_IDEM_TTL_MS (24ull * 3600 * 1000)

struct rstore;

struct rstore_opts {
    const char *url;          /* redis://HOST:PORT[/DB] */
    const char *replica;      /* this replica's id (checked by rstore_open) */
    int timeout_ms;           /* connect and per-command */
    uint64_t lease_ms;
    int audit;                /* record every commit (tests) */
    uint64_t ttl_ms;          /* a session's keys expire this long after its last
                               * write or take-over (--session-ttl) */
};

/* Parse the URL and the replica id; nothing connects yet. 0 or RC_EINVAL. */
int rstore_open(const struct rstore_opts *o, struct rstore **out, char *err, size_t errlen);
void rstore_free(struct rstore *r);
/* The model whose sessions the keys name (its fingerprint); before use. */
void rstore_set_model(struct rstore *r, uint64_t fingerprint);
const char *rstore_replica(const struct rstore *r);
uint64_t rstore_lease_ms(const struct rstore *r);
/* Close this thread's connection (a worker's is kept for the next call). */
void rstore_thread_close(void);

/* Round trip: 0, or RC_EUNAVAILABLE with err. */
int rstore_ping(struct rstore *r, char *err, size_t errlen);

/* A new session, leased to this replica at epoch 1, at position pos, with
 * a snapshot (snap, or none for the zero state). RC_EEXIST when the id is
 * taken. Adds it to its owner's set. */
int rstore_create(struct rstore *r, const char *sid, uint64_t owner, double created,
                  const uint8_t *snap, size_t snap_len, int64_t pos, uint64_t *epoch, char *err,
                  size_t errlen);

/* What a session is in the store, as rstore_acquire found it. */
struct rstore_session {
    uint64_t epoch;           /* the lease epoch now held */
    int64_t pos;              /* acknowledged position */
    int64_t snap_pos;         /* the snapshot's position (0 and no bytes: zero state) */
    double created;
    uint8_t *snap;            /* snapshot bytes (rc_malloc'ed) or NULL */
    size_t snap_len;
    int32_t *ids;             /* the log's token ids, snap_pos .. pos (rc_malloc'ed) */
    size_t n_ids;
    char holder[RSTORE_REPLICA_MAX + 1]; /* RC_EBUSY: who holds it */
    double lease_s, fetch_s;  /* seconds the two steps took */
};
void rstore_session_free(struct rstore_session *s);

/* Take the lease of sid (free, expired, or already this replica's) with a
 * new epoch, then read its snapshot and log. RC_ENOENT: no such session
 * for this owner; RC_EBUSY: another replica holds it (out->holder);
 * RC_EFORMAT/RC_ECHECKSUM: a log entry is damaged (the lease is released
 * again); RC_EUNAVAILABLE. The snapshot itself is checked by the caller
 * (snapshot_decode). */
int rstore_acquire(struct rstore *r, const char *sid, uint64_t owner, struct rstore_session *out,
                   char *err, size_t errlen);

/* Acknowledge n ids read from expected_pos under the lease (sid, epoch):
 * one entry on the log, the position advanced, and (idem_hex non-NULL)
 * the answer stored under the idempotency key's hash. RC_EFENCED (the
 * lease is not this epoch's: counted in meta's `fenced`), RC_ECONFLICT
 * (*cur_pos: the store is elsewhere), RC_EUNAVAILABLE. */
int rstore_commit(struct rstore *r, const char *sid, uint64_t epoch, int64_t expected_pos,
                  const int32_t *ids, size_t n, const char *idem_hex, const void *answer,
                  size_t answer_len, int64_t *cur_pos, char *err, size_t errlen);

/* Write snap (the state at snap_pos) under a new key, then swap it in:
 *   reset = 0: a checkpoint; log entries up to snap_pos are dropped;
 *   reset = 1: the state was replaced (PUT state): the log is emptied and
 *              the position becomes snap_pos; expected_pos >= 0 is checked.
 * RC_EFENCED, RC_ECONFLICT, RC_EUNAVAILABLE (the new key is removed when
 * the swap is refused). */
int rstore_put_snapshot(struct rstore *r, const char *sid, uint64_t epoch, const uint8_t *snap,
                        size_t len, int64_t snap_pos, int reset, int64_t expected_pos,
                        char *err, size_t errlen);

/* Renew the lease. 0: renewed (*epoch unchanged) or re-taken after it had
 * lapsed with nothing written meanwhile (*epoch the new one); RC_EFENCED:
 * lost (another replica took it, or it was deleted or advanced). */
int rstore_renew(struct rstore *r, const char *sid, uint64_t *epoch, int64_t pos, char *err,
                 size_t errlen);
/* Give the lease up (if still this epoch's). */
int rstore_release(struct rstore *r, const char *sid, uint64_t epoch, char *err, size_t errlen);
/* Delete the session (under the lease): every key but its audit. */
int rstore_delete(struct rstore *r, const char *sid, uint64_t epoch, uint64_t owner, char *err,
                  size_t errlen);
/* The stored answer of an idempotency key: 0 with *out (rc_malloc'ed),
 * RC_ENOENT when none, RC_EUNAVAILABLE. */
int rstore_idem_get(struct rstore *r, const char *sid, const char *idem_hex, char **out,
                    size_t *len, char *err, size_t errlen);
/* Ask the holder to hand sid off (pub/sub). */
int rstore_ask_handoff(struct rstore *r, const char *holder, const char *sid, char *err,
                       size_t errlen);

/* One of the owner's sessions, for listing. */
struct rstore_entry {
    char id[33];
    int64_t pos;
    double created;
    char holder[RSTORE_REPLICA_MAX + 1]; /* "" when no lease */
};
/* The owner's sessions (*out rc_malloc'ed, *n of them). */
int rstore_list(struct rstore *r, uint64_t owner, struct rstore_entry **out, size_t *n,
                char *err, size_t errlen);

/* The handoff channel: a blocking subscriber. Returns when stop() says so
 * (checked at least every second) or on an error (RC_EUNAVAILABLE: the
 * caller waits and calls again). on_msg gets each "<holder> <sid>". */
int rstore_subscribe(struct rstore *r, int (*stop)(void *), void (*on_msg)(void *, const char *),
                     void *ud, char *err, size_t errlen);

/* Hex of the idempotency key's XXH3-128 (33 bytes with the NUL). */
void rstore_idem_hash(const char *key, size_t len, char out[33]);

#endif
