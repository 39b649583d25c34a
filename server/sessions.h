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
 * the bytes of live states (503 when a new state would exceed it).
 */
#ifndef RECUR_SESSIONS_H
#define RECUR_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"

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
    int unlinked;             /* deleted while busy: freed on release */
    struct session *hnext;    /* hash chain */
    struct session *prev, *next; /* all sessions, oldest first */
};

struct sessions;

struct sessions_opts {
    size_t max_sessions;
    size_t max_per_owner;
    size_t mem_budget;        /* bytes of states */
    uint64_t ttl_ms;
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

/* Delete: unlinks at once; frees now, or at release if busy. */
void sessions_delete(struct sessions *t, struct session *s);
/* The job on s has ended: s is idle again (or freed if unlinked). */
void sessions_release(struct sessions *t, struct session *s, uint64_t now_ms);

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
