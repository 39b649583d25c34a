#include "spill.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "app.h"
#include "cluster.h"
#include "errors.h"
#include "fileio.h"
#include "log.h"
#include "snapshot.h"
#include "state.h"

#define SPILL_BACKOFF_MIN_MS 250u
#define SPILL_BACKOFF_MAX_MS 30000u

struct spillop {
    struct fileio io;
    struct app *a;
    struct store *store;
    struct session *s;     /* NULL for a plain file removal */
    struct mstate *st;     /* spill: the session's (read by the worker only);
                              restore: a fresh one to read into */
    int restore;
    uint64_t fp;
    size_t max;
    int rc;
    char err[384];
    char file[96];
};

static void file_of(const struct session *s, char *out, size_t n)
{
    snprintf(out, n, "%s.%016" PRIx64 ".state", s->id, s->owner);
}

/* Worker thread: write the state out, read it back, or remove a file. */
static void spill_run(struct fileio *io)
{
    struct spillop *op = FILEIO_OP(io, struct spillop, io);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!op->s) {
        store_remove(op->store, op->file, NULL, 0);
        return;
    }
    if (!op->restore) {
        op->rc = snapshot_encode(op->st, op->fp, &buf, &len, op->err, sizeof op->err);
        if (!op->rc)
            op->rc = store_write(op->store, op->file, buf, len, 1, op->err, sizeof op->err);
    } else {
        op->rc = store_read(op->store, op->file, op->max, &buf, &len, op->err, sizeof op->err);
        if (!op->rc)
            op->rc = snapshot_decode(op->st, op->fp, buf, len, op->err, sizeof op->err);
        if (!op->rc) /* once back in memory the file is stale */
            store_remove(op->store, op->file, NULL, 0);
    }
    rc_free(buf);
}

/* Loop thread: book the result, and answer whoever waited for it. */
static void spill_done(struct fileio *io, int cancelled)
{
    struct spillop *op = FILEIO_OP(io, struct spillop, io);
    struct app *a = op->a;
    struct session *s = op->s;
    a->io_ops--;
    if (!s) { /* a dropped session's file removed */
        rc_free(op);
        a->check_drained(a); /* it may have been the last work a drain waited for */
        return;
    }
    if (cancelled && !op->rc) {
        op->rc = RC_ECANCELED;
        snprintf(op->err, sizeof op->err, "cancelled");
    }
    struct list waiters = s->waiters; /* moved out: answered below */
    s->waiters = (struct list){0};
    int gone = s->unlinked;
    char esc[400];
    if (!op->restore) {
        a->spilling--;
        if (op->rc == 0) {
            sessions_spilled(a->sessions, s);
            a->spill_backoff_ms = 0;
        } else {
            /* a full or failing disk: the session stays in memory, and
             * spilling pauses (250 ms, doubling to 30 s) instead of
             * retrying at once, which would spin on the same write */
            if (op->rc != RC_ECANCELED) {
                uint32_t b = a->spill_backoff_ms;
                a->spill_backoff_ms = b == 0 ? SPILL_BACKOFF_MIN_MS
                                    : b >= SPILL_BACKOFF_MAX_MS / 2 ? SPILL_BACKOFF_MAX_MS
                                                                    : 2 * b;
                a->spill_retry_at = uv_now(a->loop) + a->spill_backoff_ms;
                a->metrics.spill_failures++;
            }
            log_msg("spilling session %s failed: %s (spilling paused for %u ms)", s->id,
                    log_escape(esc, sizeof esc, op->err, strlen(op->err)),
                    (unsigned)a->spill_backoff_ms);
            sessions_io_failed(a->sessions, s, NULL);
        }
        if (gone)
            a->session_ready(a, &waiters, SESSION_READY_GONE, NULL);
        else if (!list_empty(&waiters)) {
            /* somebody wants it back already */
            s->waiters = waiters;
            if (s->spilled && spill_restore(a, s) != 0) {
                s->waiters = (struct list){0};
                a->session_ready(a, &waiters, SESSION_READY_FAILED, "out of memory");
            } else if (!s->spilled) {
                s->waiters = (struct list){0};
                a->session_ready(a, &waiters, SESSION_READY_OK, NULL);
            }
        }
    } else {
        if (op->rc == 0) {
            sessions_restored(a->sessions, s, op->st, uv_now(a->loop));
            a->session_ready(a, &waiters, gone ? SESSION_READY_GONE : SESSION_READY_OK, NULL);
        } else {
            log_msg("restoring session %s failed: %s", s->id,
                    log_escape(esc, sizeof esc, op->err, strlen(op->err)));
            sessions_io_failed(a->sessions, s, op->st);
            a->session_ready(a, &waiters, gone ? SESSION_READY_GONE : SESSION_READY_FAILED,
                             op->err);
            /* a file that cannot be read as this model's state never will
             * be: the session is lost, say so once and drop it */
            if (!gone && op->rc != RC_EIO && op->rc != RC_ENOMEM && op->rc != RC_ECANCELED)
                sessions_delete(a->sessions, s);
        }
    }
    rc_free(op);
    spill_check(a);
    a->check_drained(a);
}

static struct spillop *spillop_new(struct app *a, struct session *s, int restore)
{
    struct spillop *op = rc_calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->a = a;
    op->store = a->states;
    op->s = s;
    op->restore = restore;
    op->fp = a->fingerprint;
    op->max = a->snap_bytes;
    if (s)
        file_of(s, op->file, sizeof op->file);
    return op;
}

static int spill_queue(struct spillop *op)
{
    if (fileio_queue(op->a->loop, &op->io, spill_run, spill_done) != 0)
        return RC_EIO;
    op->a->io_ops++;
    return 0;
}

static void on_spill_timer(uv_timer_t *t) { spill_check(t->data); }

void spill_check(struct app *a)
{
    if (a->cluster) { /* with a store, Redis is where idle sessions go */
        cluster_check(a);
        return;
    }
    if (!a->states || !a->sessions || a->stopping)
        return;
    uint64_t now = uv_now(a->loop);
    if (now < a->spill_retry_at) { /* backing off after a failed write */
        if (!uv_is_active((uv_handle_t *)&a->spill_timer))
            uv_timer_start(&a->spill_timer, on_spill_timer, a->spill_retry_at - now, 0);
        return;
    }
    while (sessions_over_high_water(a->sessions) && !sessions_under_low_water(a->sessions)) {
        /* stop once the spills in flight will bring it under low water */
        size_t size = sessions_state_size(a->sessions);
        size_t after_spills = sessions_state_bytes(a->sessions) - (size_t)a->spilling * size;
        if ((double)after_spills <= 0.75 * (double)a->cfg->state_memory)
            break;
        struct session *s = sessions_pick_spill(a->sessions);
        if (!s)
            break;
        struct spillop *op = spillop_new(a, s, 0);
        if (!op)
            break;
        op->st = s->state;
        s->io = 1;
        if (spill_queue(op) != 0) {
            s->io = 0;
            rc_free(op);
            break;
        }
        a->spilling++;
    }
}

int spill_restore(struct app *a, struct session *s)
{
    struct spillop *op = spillop_new(a, s, 1);
    if (!op)
        return RC_ENOMEM;
    if (sessions_restore_state(a->sessions, &op->st) != 0) {
        rc_free(op);
        return RC_ENOMEM;
    }
    s->io = 1;
    if (spill_queue(op) != 0) {
        sessions_io_failed(a->sessions, s, op->st);
        rc_free(op);
        return RC_EIO;
    }
    spill_check(a); /* the state coming back may need room */
    return 0;
}

void spill_drop_file(void *ud, const struct session *s)
{
    struct app *a = ud;
    if (a->keep_files)
        return; /* shutting down: the file is the session, kept for the restart */
    char file[96];
    file_of(s, file, sizeof file);
    if (a->stopping || !a->loop) {
        store_remove(a->states, file, NULL, 0);
        return;
    }
    struct spillop *op = spillop_new(a, NULL, 0);
    if (op) {
        memcpy(op->file, file, sizeof file);
        if (spill_queue(op) == 0)
            return;
        rc_free(op);
    }
    store_remove(a->states, file, NULL, 0); /* could not queue: do it now */
}

static int hexval(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (uint64_t)d;
    }
    *out = v;
    return 0;
}

void spill_load_index(struct app *a)
{
    if (!a->states)
        return;
    struct store_entry *list;
    size_t n;
    char err[256];
    if (store_list(a->states, &list, &n, err, sizeof err) != 0) {
        log_msg("--state-dir: %s", err);
        return;
    }
    size_t ok = 0, foreign = 0;
    for (size_t i = 0; i < n; i++) {
        const char *nm = list[i].name;
        uint64_t owner, dummy;
        /* <32 hex id>.<16 hex owner>.state */
        if (strlen(nm) != 32 + 1 + 16 + 6 || nm[32] != '.' || strcmp(nm + 49, ".state") ||
            hexval(nm, 32, &dummy) || hexval(nm + 33, 16, &owner))
            continue;
        uint8_t head[SNAPSHOT_PEEK_BYTES];
        size_t got;
        struct snapshot_head sh;
        if (store_read_head(a->states, nm, head, sizeof head, &got, err, sizeof err) != 0 ||
            snapshot_peek(head, got, &sh) != 0)
            continue;
        if (sh.fingerprint != a->fingerprint || list[i].bytes != a->snap_bytes) {
            foreign++;
            continue;
        }
        int64_t pos = sh.position;
        char id[33];
        memcpy(id, nm, 32);
        id[32] = 0;
        if (sessions_add_spilled(a->sessions, id, owner, (double)list[i].mtime, pos,
                                 uv_now(a->loop)) == 0)
            ok++;
    }
    rc_free(list);
    if (ok || foreign)
        log_msg("--state-dir: %zu session(s) restored from disk%s", ok,
                foreign ? " (files from another model were left alone)" : "");
}

size_t spill_persist_all(struct app *a)
{
    if (!a->states || !a->sessions)
        return 0;
    size_t ok = 0, bad = 0;
    for (struct session *s = sessions_first(a->sessions); s; s = sessions_next(s)) {
        if (!s->state || s->spilled)
            continue;
        struct spillop op;
        memset(&op, 0, sizeof op);
        op.store = a->states;
        op.s = s;
        op.st = s->state;
        op.fp = a->fingerprint;
        file_of(s, op.file, sizeof op.file);
        spill_run(&op.io); /* blocking, on the loop thread: nothing else runs */
        if (op.rc == 0)
            ok++;
        else {
            bad++;
            char esc[400];
            log_msg("persisting session %s failed: %s", s->id,
                    log_escape(esc, sizeof esc, op.err, strlen(op.err)));
        }
    }
    if (bad)
        log_msg("--state-dir: %zu session(s) written; %zu could NOT be written and are lost "
                "(see above): exiting with status 1", ok, bad);
    else
        log_msg("--state-dir: %zu session(s) written", ok);
    return bad;
}
