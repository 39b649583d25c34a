/*
 * sessions.h — the session table: ids, owners, states, limits, expiry.
 *
 * Owned by the loop thread (no locking). A session holds one recurrent
 * state, allocated once when the session is created and never grown; the
 * compute thread uses it only while a job runs on it (`busy`), and the
 * table never frees a busy session's state: a DELETE or an expiry of a busy
 * session unlinks it (its id stops resolving at once) and the state is
 * freed when the job comes back (sessions_release).
 *
 * Ids are 128 random bits from getrandom(2), as 32 hex digits: not
 * guessable, not sequential. A session belongs to the API key that made
 * it (owner = a hash of the key; 0 when auth is off); another key gets the
 * same 404 as for an id that does not exist.
 *
 * Limits: max sessions (503), max per owner (429), and a memory budget on
 * the bytes of states in memory (503 when a new state would exceed it).
 *
 * Spilling (--state-dir): an idle session's state may be written to disk
 * and freed (`spilled`); it comes back when a request needs it. While a
 * spill or a restore runs (`io`) the session is not idle either. The file
 * work itself is the caller's (serve.c); the table only keeps the books.
 */
#ifndef RECUR_SESSIONS_H
#define RECUR_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "list.h"

struct model;
struct mstate;
struct job;

#define SESSION_ID_LEN 32

struct session {
    char id[SESSION_ID_LEN + 1];
    uint64_t owner;           /* hash of the creating key; 0 = no auth */
    struct mstate *state;     /* owned; used by the compute thread while busy */
    int64_t pos;              /* position when the last job ended */
    double created;           /* unix seconds */
    uint64_t last_used_ms;    /* loop clock (uv_now) */
    struct job *busy;         /* job running on it, or NULL */
    int io;                   /* a spill or restore of its state is running */
    int spilled;              /* the state is on disk (state == NULL) */
    struct list waiters;      /* requests waiting for the state to be back
                               * (dispatch.c's struct rq, newest first) */
    int unlinked;             /* deleted while busy: freed on release */
    /* --store (cluster.c): this replica's hold on the session */
    uint64_t epoch;           /* lease epoch held; 0 = not yet (being acquired or created) */
    int64_t store_pos;        /* position acknowledged in the store */
    int64_t snap_pos;         /* position of the store's snapshot */
    uint64_t dirty_ms;        /* loop ms of the first commit since that snapshot; 0 = none */
    int drop;                 /* its copy here may differ from the store's (a commit
                               * failed, or the lease was lost): dropped once idle */
    int handoff;              /* another replica asked for it: handed off once idle */
    struct session *hnext;    /* hash chain */
    struct list_node link;    /* on the table's list of all sessions, oldest first */
};

struct sessions;

struct sessions_opts {
    size_t max_sessions;
    size_t max_per_owner;
    size_t mem_budget;        /* bytes of states */
    uint64_t ttl_ms;
    /* called when a session whose state is on disk is destroyed (the
     * caller removes the file); may be NULL */
    void (*on_drop_spilled)(void *ud, const struct session *s);
    /* with a store: 1 when an idle session can leave memory to make room,
     * so a new state may overshoot the budget until it has (may be NULL) */
    int (*can_make_room)(void *ud);
    void *ud;
};

int sessions_create(const struct model *m, const struct sessions_opts *o, struct sessions **out);
/* Frees every session. No session may be busy. */
void sessions_free(struct sessions *t);

/* A new session with a zeroed state, or an api_error: 503 (table full or
 * memory budget spent; *retry_after set), 429 (owner's cap), 503 out of
 * memory. now_ms is the loop clock. */
int sessions_new(struct sessions *t, uint64_t owner, uint64_t now_ms, struct session **out,
                 struct api_error *e);

/* The session with this id owned by owner, or NULL. */
struct session *sessions_get(struct sessions *t, const char *id, uint64_t owner);
/* The session with this id whoever owns it, or NULL (the store's own
 * bookkeeping: leases, handoffs). */
struct session *sessions_find(struct sessions *t, const char *id);
/* A well-formed session id (32 lowercase hex digits). */
int sessions_valid_id(const char *id);

/* Delete: unlinks at once; frees now, or at release if busy / in io. */
void sessions_delete(struct sessions *t, struct session *s);
/* The job on s has ended: s is idle again (or freed if unlinked). */
void sessions_release(struct sessions *t, struct session *s, uint64_t now_ms);

/* Spilling. pick: the least recently used idle session with its state in
 * memory (NULL if none). spilled: its state was written out; the state is
 * freed. restored: a state read back (allocated with
 * sessions_restore_state) is attached. io_failed: the spill/restore did
 * not happen. Each ends the io; an unlinked session is freed.
 * pick never returns a busy session, so a handler that has read
 * s->state for a job must mark s busy (submit) before anything that may
 * spill (spill_check): a state handed to the compute thread is only ever
 * read by it, never freed under it. */
int sessions_over_high_water(const struct sessions *t);
int sessions_under_low_water(const struct sessions *t);
struct session *sessions_pick_spill(struct sessions *t);
int sessions_restore_state(struct sessions *t, struct mstate **out);
void sessions_spilled(struct sessions *t, struct session *s);
void sessions_restored(struct sessions *t, struct session *s, struct mstate *st, uint64_t now_ms);
void sessions_io_failed(struct sessions *t, struct session *s, struct mstate *st);
/* Register a session found on disk at start-up (spilled, idle). */
int sessions_add_spilled(struct sessions *t, const char *id, uint64_t owner, double created,
                         int64_t pos, uint64_t now_ms);

/* Delete idle sessions unused for longer than the TTL; returns how many. */
size_t sessions_expire(struct sessions *t, uint64_t now_ms);

size_t sessions_count(const struct sessions *t);
size_t sessions_state_bytes(const struct sessions *t); /* bytes of live states */
size_t sessions_state_size(const struct sessions *t);  /* bytes of one state */
uint64_t sessions_ttl_ms(const struct sessions *t);
/* Reserve / return budget for a temporary state (stateless requests). */
int sessions_reserve(struct sessions *t, struct api_error *e);
void sessions_unreserve(struct sessions *t);

/* Iterate, oldest first (the callee may not delete). */
struct session *sessions_first(struct sessions *t);
struct session *sessions_next(struct session *s);

#endif
