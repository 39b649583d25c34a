/*
 * compute.c — the compute thread (compute.h): it loads the model, admits
 * submitted jobs, waits until some are ready, runs a tick over them
 * (tick.c) and publishes what the tick made. The sched_* calls the loop
 * makes are here too, with the lock they share.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include "compute_impl.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "blas.h"
#include "cpus.h"
#include "errors.h"
#include "forward.h"
#include "model.h"

/* ---- loop-side API --------------------------------------------------------- */

void sched_submit(struct sched *s, struct job *j)
{
    j->ch.submitted_us = now_us();
    pthread_mutex_lock(&s->mu);
    list_push_back(&s->incoming, &j->ch.link);
    atomic_fetch_add(&s->stats.queued, 1);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

size_t sched_feed(struct sched *s, struct job *j, const char *bytes, size_t n, int final)
{
    pthread_mutex_lock(&s->mu);
    if (n && outbuf_put(&j->ch.inbox, bytes, n) != 0 && !j->ch.cancel) {
        /* No memory for the upload: the job fails rather than silently
         * losing text. */
        j->ch.cancel = CANCEL_NO_MEMORY;
    }
    if (final)
        j->ch.inbox_closed = 1;
    size_t have = j->ch.inbox.n;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return have;
}

void sched_cancel(struct sched *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    if (!j->ch.cancel)
        j->ch.cancel = CANCEL_ASKED;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

size_t sched_pull(struct sched *s, struct job *j, char *buf, size_t max, int *done)
{
    pthread_mutex_lock(&s->mu);
    size_t n = j->ch.outbox.n < max ? j->ch.outbox.n : max;
    int was_full = j->ch.outbox.n >= s->o.stream_buffer;
    if (n) {
        memcpy(buf, j->ch.outbox.p, n);
        memmove(j->ch.outbox.p, j->ch.outbox.p + n, j->ch.outbox.n - n);
        j->ch.outbox.n -= n;
    }
    *done = j->ch.done && j->ch.outbox.n == 0;
    if (was_full && j->ch.outbox.n < s->o.stream_buffer)
        pthread_cond_signal(&s->cv); /* a paused generation may go on */
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t sched_inbox(struct sched *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    size_t n = j->ch.inbox.n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

struct job *sched_take_events(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    struct job *list = s->events, *rev = NULL;
    s->events = NULL;
    for (struct job *j = list; j;) {
        struct job *nx = j->ch.ev_next;
        j->ch.queued_event = 0;
        j->ch.ev_next = NULL;
        j->loop.final_seen = j->ch.done; /* under the lock: done and its event go together */
        j->loop.taken_next = rev;
        rev = j;
        j = nx;
    }
    pthread_mutex_unlock(&s->mu);
    return rev; /* oldest first */
}

int sched_status(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    int st = s->status;
    pthread_mutex_unlock(&s->mu);
    return st;
}

const char *sched_error(struct sched *s) { return s->error; }
const struct model *sched_model(struct sched *s) { return s->m; }
const struct codec *sched_codec(struct sched *s) { return s->codec; }
const struct sched_stats *sched_stats(struct sched *s) { return &s->stats; }

/* ---- compute side: helpers ---------------------------------------------- */

/* Under the lock. */
static void post_event(struct sched *s, struct job *j)
{
    if (j->ch.queued_event)
        return;
    j->ch.queued_event = 1;
    j->ch.ev_next = s->events;
    s->events = j;
}


/* End a job the compute thread will not run (lock held): its error and
 * an event for the loop. */
static void end_job_unrun(struct sched *s, struct job *j, int rc, int kind, const char *msg,
                      const char *reason)
{
    set_job_error(j, rc, kind, msg);
    if (!j->res.finish)
        j->res.finish = reason;
    j->ch.done = 1;
    atomic_fetch_sub(&s->stats.queued, 1);
    post_event(s, j);
}

double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* ---- the thread --------------------------------------------------------------- */

/* Under the lock: is j worth a tick now? */
static int is_ready(struct sched *s, struct job *j)
{
    struct job_run *r = j->run;
    if (j->ch.cancel || j->req.kind != JOB_RUN || r->phase == PH_START)
        return 1;
    if (r->phase == PH_INPUT) {
        size_t left = r->n_ids - r->off;
        if (r->input_eof)
            return 1;
        /* streamed: a whole chunk to read, or bytes to take */
        return left >= (size_t)s->o.prefill_chunk ||
               (left < (size_t)s->o.prefill_chunk && (j->ch.inbox.n > 0 || j->ch.inbox_closed));
    }
    if (r->phase == PH_GEN)
        return j->ch.outbox.n < s->o.stream_buffer;
    return 0;
}

static int load_model(struct sched *s)
{
    char err[512];
    int rc;
    if ((rc = model_load_as(s->model_dir, s->o.weights, &s->m, err, sizeof err)) != 0) {
        snprintf(s->error, sizeof s->error, "%s", err);
        return rc;
    }
    const struct model_config *c = model_config(s->m);
    s->d_model = c->d_model;
    s->n_vocab = c->n_vocab;
    s->vocab = c->vocab_size;
    if ((rc = codec_load(s->model_dir, c->vocab_size, c->n_vocab, &s->codec, err, sizeof err)) !=
        0) {
        snprintf(s->error, sizeof s->error, "%s", err);
        return rc;
    }
    size_t bt = (size_t)s->o.batch_tokens, dm = (size_t)s->d_model;
    /* OpenBLAS runs between our pool's loops on the same cores, so it gets
     * the same count, unless its own variables were set (the user chose). */
    int threads = s->o.threads > 0 ? (int)s->o.threads : cpu_threads_auto();
    if (!blas_threads_from_env())
        blas_set_threads(threads);
    atomic_store(&s->stats.threads, threads);
    atomic_store(&s->stats.blas_threads, blas_threads());
    if ((rc = fwd_create_threads(s->m, s->o.batch_tokens, threads, &s->f)) != 0 ||
        (rc = sampler_scratch_create(s->vocab, &s->ss)) != 0) {
        snprintf(s->error, sizeof s->error, "out of memory for the compute scratch");
        return rc ? rc : RC_ENOMEM;
    }
    s->logits = rc_aligned_alloc(sizeof(float) * LOGIT_ROWS * (size_t)s->n_vocab);
    s->rows = rc_aligned_alloc(sizeof(float) * LOGIT_ROWS * dm);
    s->hidden = rc_aligned_alloc(sizeof(float) * bt * dm);
    s->prev = rc_aligned_alloc(sizeof(float) * bt * dm);
    s->segs = rc_calloc(bt, sizeof *s->segs);
    s->top_ids = rc_calloc(64, sizeof *s->top_ids);
    s->top_lps = rc_calloc(64, sizeof *s->top_lps);
    if (!s->logits || !s->rows || !s->hidden || !s->prev || !s->segs || !s->top_ids ||
        !s->top_lps) {
        snprintf(s->error, sizeof s->error, "out of memory for the compute scratch");
        return RC_ENOMEM;
    }
    return 0;
}

/* Under the lock: move submitted jobs to the end of the active list,
 * oldest first. A job that cannot even be tracked (no memory for its run,
 * or no model) ends at once. Returns 1 when such a job was posted. */
static int admit_incoming(struct sched *s)
{
    int posted = 0;
    LIST_FOR_EACH_SAFE (struct job, j, &s->incoming, ch.link) {
        list_remove(&s->incoming, &j->ch.link);
        if (!j->run)
            j->run = rc_calloc(1, sizeof *j->run);
        if (!j->run || s->status != 1) {
            int loaded = s->status == 1;
            end_job_unrun(s, j, loaded ? RC_ENOMEM : RC_EIO,
                      loaded ? API_OUT_OF_MEMORY : API_UNAVAILABLE,
                      loaded ? "out of memory" : "the model is not loaded", "error");
            posted = 1;
        } else {
            list_push_back(&s->active, &j->ch.link);
        }
    }
    return posted;
}

/* Under the lock: room in the ready list (and the planner's arrays) for
 * every active job twice (ready list, then a temporary copy) plus a
 * decode row per lane. Returns how many active jobs fit; those that do
 * not end now with out_of_memory rather than wait unseen (*posted). */
static size_t fit_ready_scratch(struct sched *s, int *posted)
{
    size_t nact = 0, nlanes = 0;
    LIST_FOR_EACH (struct job, j, &s->active, ch.link) {
        nact++;
        nlanes += j->run ? (size_t)j->run->n_lanes : 0;
    }
    if (nact * 2 + nlanes > s->ready_cap) {
        size_t nc = nact * 2 + nlanes + 16;
        struct job **nr = rc_realloc(s->ready, nc * sizeof *nr);
        if (nr)
            s->ready = nr;
        struct batch_want *nw = nr ? rc_realloc(s->want, nc * sizeof *nw) : NULL;
        if (nw)
            s->want = nw;
        struct batch_take *nt = nw ? rc_realloc(s->take, nc * sizeof *nt) : NULL;
        if (nt) {
            s->take = nt;
            s->ready_cap = nc;
        }
    }
    if (!nact || s->ready_cap >= nact * 2)
        return nact;
    size_t fit = s->ready_cap / 2, k = 0;
    LIST_FOR_EACH_SAFE (struct job, j, &s->active, ch.link) {
        if (k++ < fit)
            continue;
        list_remove(&s->active, &j->ch.link);
        end_job_unrun(s, j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory", "error");
        *posted = 1;
    }
    return fit;
}

/* Under the lock: the ready jobs into s->ready, round-robin from
 * `rotate` so that no job always comes first. Returns how many. */
static int collect_ready(struct sched *s, size_t nact)
{
    int nready = 0;
    if (!nact)
        return 0;
    size_t start = (size_t)s->rotate % nact, i = 0;
    struct job **all = s->ready + nact; /* temporary */
    LIST_FOR_EACH (struct job, j, &s->active, ch.link)
        all[i++] = j;
    for (size_t k = 0; k < nact; k++) {
        struct job *j = all[(start + k) % nact];
        if (is_ready(s, j))
            s->ready[nready++] = j;
    }
    s->rotate++;
    return nready;
}

/* Under the lock: wait until some job is ready (or stop). Jobs ended
 * meanwhile are announced before waiting. Returns the ready count. */
static int wait_for_ready(struct sched *s)
{
    int posted = 0; /* jobs finished at admission: the loop must hear of them */
    for (;;) {
        posted |= admit_incoming(s);
        if (s->stop)
            return 0;
        size_t nact = fit_ready_scratch(s, &posted);
        int nready = collect_ready(s, nact);
        if (nready)
            return nready;
        if (posted) {
            posted = 0;
            pthread_mutex_unlock(&s->mu);
            s->notify(s->notify_ud);
            pthread_mutex_lock(&s->mu);
            continue;
        }
        pthread_cond_wait(&s->cv, &s->mu);
    }
}

/* Under the lock, at stop: every active job ends cancelled. */
static void cancel_all(struct sched *s)
{
    LIST_FOR_EACH_SAFE (struct job, j, &s->active, ch.link) {
        list_remove(&s->active, &j->ch.link);
        end_job_unrun(s, j, RC_ECANCELED, API_UNAVAILABLE, "server shutting down", "cancelled");
    }
}

/* Under the lock: streamed input moves from the shared inboxes to the
 * jobs' own buffers (only below a chunk, so ids stay bounded), and each
 * job's cancel flag is copied: the tick reads its own copy. */
static void take_shared_input(struct sched *s, int nready)
{
    for (int i = 0; i < nready; i++) {
        struct job *j = s->ready[i];
        struct job_run *r = j->run;
        if (j->req.kind != JOB_RUN || !j->req.streamed || r->input_eof)
            continue;
        if (r->n_ids - r->off >= (size_t)s->o.prefill_chunk)
            continue;
        if (j->ch.inbox.n) {
            if (outbuf_put(&r->taken, j->ch.inbox.p, j->ch.inbox.n) != 0) {
                j->ch.cancel = CANCEL_NO_MEMORY;
                continue;
            }
            r->inbox_event = 1;
            j->ch.inbox.n = 0;
        }
        if (j->ch.inbox_closed)
            r->took_final = 1;
    }
    for (int i = 0; i < nready; i++)
        s->ready[i]->run->cancel = s->ready[i]->ch.cancel;
}

/* Under the lock, after a tick: staged stream bytes go to the outboxes,
 * finished jobs leave the active list as done, and every job with news
 * gets an event. Returns 1 when the loop must be woken. */
static int publish_tick(struct sched *s)
{
    int any = 0;
    LIST_FOR_EACH_SAFE (struct job, j, &s->active, ch.link) {
        struct job_run *r = j->run;
        if (r->stage.n) {
            if (outbuf_put(&j->ch.outbox, r->stage.p, r->stage.n) != 0)
                end_job_with_error(j, RC_ENOMEM, API_OUT_OF_MEMORY, "out of memory");
            r->stage.n = 0;
            post_event(s, j);
            any = 1;
        }
        if (r->inbox_event) {
            r->inbox_event = 0;
            post_event(s, j);
            any = 1;
        }
        if (r->phase == PH_FINISHED) {
            list_remove(&s->active, &j->ch.link);
            j->ch.done = 1;
            atomic_fetch_sub(&s->stats.queued, 1);
            post_event(s, j);
            any = 1;
        }
    }
    return any;
}

static void *thread_main(void *arg)
{
    struct sched *s = arg;
    prctl(PR_SET_NAME, "recurd-compute", 0, 0, 0);
    int rc = load_model(s);
    pthread_mutex_lock(&s->mu);
    s->status = rc == 0 ? 1 : -1;
    pthread_mutex_unlock(&s->mu);
    s->notify(s->notify_ud);

    for (;;) {
        pthread_mutex_lock(&s->mu);
        int nready = wait_for_ready(s);
        if (s->stop) {
            cancel_all(s);
            pthread_mutex_unlock(&s->mu);
            s->notify(s->notify_ud);
            break;
        }
        take_shared_input(s, nready);
        pthread_mutex_unlock(&s->mu);

        /* ready[] is stable: only this thread changes the active list */
        run_tick(s, s->ready, nready);

        pthread_mutex_lock(&s->mu);
        int any = publish_tick(s);
        pthread_mutex_unlock(&s->mu);
        if (any)
            s->notify(s->notify_ud);
    }
    return NULL;
}

int sched_create(const struct sched_opts *o, void (*notify)(void *), void *notify_ud,
                 struct sched **out)
{
    struct sched *s = rc_calloc(1, sizeof *s);
    if (!s)
        return RC_ENOMEM;
    s->o = *o;
    if (s->o.prefill_chunk > s->o.batch_tokens)
        s->o.prefill_chunk = s->o.batch_tokens; /* a chunk must fit a tick */
    s->model_dir = rc_strdup(o->model_dir);
    s->notify = notify;
    s->notify_ud = notify_ud;
    if (!s->model_dir) {
        rc_free(s);
        return RC_ENOMEM;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->th, NULL, thread_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        rc_free(s->model_dir);
        rc_free(s);
        return RC_EIO;
    }
    pthread_setname_np(s->th, "recurd-compute"); /* also set by itself */
    s->started = 1;
    *out = s;
    return 0;
}

void sched_stop(struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started)
        pthread_join(s->th, NULL);
    s->started = 0;
}

void sched_free(struct sched *s)
{
    if (!s)
        return;
    sched_stop(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    fwd_free(s->f);
    sampler_scratch_free(s->ss);
    codec_free(s->codec);
    model_free(s->m);
    rc_free(s->logits);
    rc_free(s->rows);
    rc_free(s->hidden);
    rc_free(s->prev);
    rc_free(s->segs);
    rc_free(s->ready);
    rc_free(s->want);
    rc_free(s->take);
    rc_free(s->top_ids);
    rc_free(s->top_lps);
    rc_free(s->model_dir);
    rc_free(s);
}
