#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "errors.h"
#include "list.h"
#include "log.h"
#include "os.h"

/* Lingering close after a 413 mid-body: read and discard for at most this
 * long / this many bytes, then close. */
#define LINGER_MS 2000
#define LINGER_BYTES (8u << 20)
#define MAX_HEADERS 8
/* Lingering close after an early answer (one given before the body was
 * read: 401, 404, 413, 422 ...): once MHD has sent it and closes, the
 * socket is kept open and the unread body discarded, up to the request's
 * body cap, until the client has sent it all (EOF), stalls for
 * EARLY_LINGER_IDLE_MS, or EARLY_LINGER_MS have passed; at most
 * max_connections / 4 sockets at once (beyond, they close at once).
 * Closing with unread bytes would make the kernel send a reset, and a
 * client that writes its whole body before reading (Python's http.client,
 * requests) would see a broken pipe instead of the answer. nginx does the
 * same (lingering_close). */
#define EARLY_LINGER_MS 30000
#define EARLY_LINGER_IDLE_MS 5000
/* X-Request-Id: a client's id is kept when it is 1..REQID_MAX characters
 * of REQID_CHARS (safe in a header and a log line); otherwise one is made. */
#define REQID_MAX 128
static const char REQID_CHARS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:+/=@";
/* CORS preflight answers: how long a browser may cache them, and the
 * request headers allowed when the browser does not list its own. */
#define CORS_MAX_AGE "600"
#define CORS_METHODS "GET, POST, PUT, DELETE, OPTIONS"
#define CORS_HEADERS "Authorization, Content-Type, X-Request-Id, Idempotency-Key"
#define CORS_EXPOSE                                                                       \
    "X-Request-Id, Retry-After, Location, Content-Disposition, WWW-Authenticate, "        \
    "X-Recurd-Replica, X-Recurd-Position, Idempotent-Replayed"
/* The answer when not even an error body can be allocated. */
static const char OOM_BODY[] = "{\"error\":" API_OOM_ERROR_JSON "}";
/* Slowloris: a request's headers must be complete within the connection
 * timeout of the connection opening (or of its previous response ending),
 * however slowly they trickle in. Checked every HDR_TICK_MS; a connection
 * is cut HDR_EARLY_MS before MHD's own idle timeout would close it, so an
 * idle connection is always counted once, here. */
#define HDR_TICK_MS 200
#define HDR_EARLY_MS 500

/* One per open connection (MHD_OPTION_NOTIFY_CONNECTION). */
struct http_conn {
    struct MHD_Connection *conn;
    uint64_t since;          /* loop ms: opened, or its last request ended */
    int in_request;          /* headers complete, request not yet ended */
    int cut;                 /* shut down for taking too long */
    uint64_t linger;         /* body bytes to discard after the close */
    struct list_node link;   /* on http.conns */
};

struct http {
    uv_loop_t *loop;
    struct MHD_Daemon *d;
    uv_poll_t poll;          /* MHD's epoll fd */
    uv_timer_t timer;        /* MHD's own timeouts */
    uv_timer_t peek;         /* dead-client check of suspended requests */
    struct http_app app;
    size_t max_body;
    int port;
    int in_run, run_again;
    int in_flight;
    int quiesced;
    int stopping;            /* http_free under way */
    struct list susp;        /* suspended requests (http_req.susp_link), newest first */
    int n_susp;
    int n_upload;            /* streamed uploads waiting for body bytes */
    struct list all;         /* every request in flight (http_req.all_link), newest first */
    struct list conns;       /* every open connection (http_conn.link), newest first */
    uv_timer_t hdr;          /* header deadline check */
    uint64_t hdr_deadline_ms;
    uint64_t header_timeouts, request_timeouts;
    unsigned max_connections;
    struct list drains;      /* closed connections discarding a body (drain.link) */
    unsigned n_drains;
    /* CORS: allowed origins ("*": any) */
    char **cors;
    int n_cors;
    char replica[72];        /* X-Recurd-Replica on every response ("" = none) */
    /* minimum upload rate (bytes/s) after a grace period; 0 = off */
    uint64_t min_body_rate, min_body_grace_ms;
    uint64_t reqid_seed, reqid_next;
};

/* A connection MHD has closed, kept open to discard its unread body. */
struct drain {
    struct http *h;
    uv_poll_t poll;
    uv_timer_t timer;
    int fd;
    uint64_t left;           /* bytes still accepted */
    uint64_t until;          /* loop ms: give up */
    uint64_t idle_until;     /* loop ms: give up unless more comes */
    int closing;
    struct list_node link;   /* on http.drains until it starts closing */
};

struct http_req {
    struct http *h;
    struct MHD_Connection *conn;
    char *method, *path;
    int mode;                /* enum http_body_mode */
    size_t cap;              /* body cap (buffered mode) */
    char *body;              /* buffered body, NUL-terminated */
    size_t len, bcap;
    void *data;              /* app's */
    const char *route, *note;
    /* the response, until queued */
    int has_resp, queued;
    int hold;                /* http_hold: a response is kept, not sent */
    int status;
    const char *ctype;
    char *resp;
    size_t resp_len;
    http_pull_fn pull;
    char small[256];         /* http_respond_small's body (no allocation) */
    int small_resp;
    char *hname[MAX_HEADERS], *hval[MAX_HEADERS];
    int nh;
    /* lifecycle */
    int requested;           /* on_request called */
    int pause_req;           /* app asked to pause the upload */
    int suspended;
    int gone;                /* client went away while suspended */
    int lingering;           /* 413 written, discarding the rest */
    uint64_t linger_until;
    size_t linger_read;
    int body_done;           /* final access-handler call seen */
    int upload;              /* counted in n_upload: body still arriving */
    int has_body;            /* a Content-Length above 0 or a Transfer-Encoding */
    int dead;                /* answered by the HTTP layer: the app never sees it */
    int must_close;          /* framing error: Connection: close */
    uint64_t rx;             /* body bytes received */
    uint64_t t0_ms;          /* loop ms at the headers */
    const char *cors;        /* Access-Control-Allow-Origin value, or NULL */
    char reqid[REQID_MAX + 1];
    uint64_t t0;
    size_t sent;
    struct list_node susp_link;       /* on http.susp while suspended */
    struct list_node all_link;        /* on http.all while in flight */
};

static void http_rearm(struct http *h);
static void write_direct(struct http_req *r);
static void drain_start(struct http *h, int fd, uint64_t left);

/* ---- suspension --------------------------------------------------------- */

static void susp_add(struct http_req *r)
{
    struct http *h = r->h;
    list_push_front(&h->susp, &r->susp_link);
    h->n_susp++;
}

static void susp_del(struct http_req *r)
{
    struct http *h = r->h;
    list_remove(&h->susp, &r->susp_link);
    h->n_susp--;
}

static void peek_cb(uv_timer_t *t);

static void peek_start(struct http *h)
{
    if (!uv_is_active((uv_handle_t *)&h->peek))
        uv_timer_start(&h->peek, peek_cb, HTTP_POLL_MS, HTTP_POLL_MS);
}

static void suspend(struct http_req *r)
{
    if (r->suspended)
        return;
    MHD_suspend_connection(r->conn);
    r->suspended = 1;
    susp_add(r);
    peek_start(r->h);
}

static void upload_end(struct http_req *r)
{
    if (r->upload) {
        r->upload = 0;
        r->h->n_upload--;
    }
}

static void timer_cb(uv_timer_t *t);

/* MHD must run soon, but not from inside the caller: an MHD run may
 * complete requests and so free what the caller still holds (a job on the
 * event list being walked, the request it is answering). Within a run,
 * run again before returning; otherwise on the loop's next turn. */
static void run_soon(struct http *h)
{
    if (h->in_run)
        h->run_again = 1;
    else
        uv_timer_start(&h->timer, timer_cb, 0, 0);
}

static void resume(struct http_req *r)
{
    if (!r->suspended)
        return;
    susp_del(r);
    r->suspended = 0;
    MHD_resume_connection(r->conn);
    run_soon(r->h);
}

static int conn_fd(const struct http_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* A suspended connection's client closed (EOF) or reset it. */
static int client_gone(const struct http_req *r)
{
    int fd = conn_fd(r);
    if (fd < 0)
        return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return 1;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* Discard what the client still sends after a 413; 1 when done. */
static int linger_step(struct http_req *r)
{
    int fd = conn_fd(r);
    if (fd < 0 || uv_now(r->h->loop) >= r->linger_until || r->linger_read >= LINGER_BYTES)
        return 1;
    char buf[16384];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0)
            return 1;
        if (n < 0)
            return !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        r->linger_read += (size_t)n;
        if (r->linger_read >= LINGER_BYTES)
            return 1;
    }
}

/* Answer e straight to the socket while the body is still arriving (MHD
 * cannot queue an answer mid-body); note names the case in the log. */
static void answer_mid_body(struct http_req *r, const struct api_error *e, const char *note)
{
    http_respond_error(r, e);
    write_direct(r);
    r->queued = 1;
    r->sent = r->resp_len;
    r->note = note;
}

/* The client ended the stream before the body did: 400. */
static void body_cut_short(struct http_req *r)
{
    struct api_error e;
    api_error_set(&e, API_INVALID_REQUEST,
                  "the request body ended early: the client closed its side after %" PRIu64
                  " bytes", r->rx);
    answer_mid_body(r, &e, "body-cut-short");
}

static void peek_cb(uv_timer_t *t)
{
    struct http *h = t->data;
    int any = 0;
    /* Resuming must not run MHD inside this walk: MHD may complete and
     * free requests of the list. Run once afterwards. */
    h->in_run = 1;
    LIST_FOR_EACH_SAFE (struct http_req, r, &h->susp, susp_link) {
        if (r->lingering) {
            if (linger_step(r)) {
                r->gone = 1;
                resume(r);
                any = 1;
            }
        } else if (client_gone(r)) {
            r->gone = 1;
            resume(r);
            any = 1;
        }
    }
    /* A request whose body is still arriving is not suspended, and MHD
     * (edge-triggered epoll) can miss the client's FIN when it came with
     * the last bytes read: the request would wait for the connection
     * timeout, holding its connection (and a streamed append its session).
     * Shutting the socket down here wakes MHD, which then reads the end
     * and closes the request. A buffered body that ended early is answered
     * 400 first (a client that half-closed still reads); one that trickles
     * below --min-body-rate after its grace period is answered 408. */
    uint64_t now = uv_now(h->loop);
    if (h->n_upload) /* else no request has its body arriving: skip the walk */
        LIST_FOR_EACH (struct http_req, r, &h->all, all_link) {
            if (!r->upload || r->suspended || r->gone)
                continue;
            int ended = client_gone(r);
            uint64_t el = now - r->t0_ms;
            int slow = !ended && r->mode != HTTP_BODY_STREAM && h->min_body_rate &&
                       el > h->min_body_grace_ms && r->rx < h->min_body_rate * el / 1000;
            if (!ended && !slow)
                continue;
            if (r->mode != HTTP_BODY_STREAM && !r->has_resp) {
                if (slow) {
                    struct api_error e;
                    api_error_set(&e, API_REQUEST_TIMEOUT,
                                  "the request body came slower than %" PRIu64
                                  " bytes/s (--min-body-rate)", h->min_body_rate);
                    answer_mid_body(r, &e, "body-too-slow");
                    h->request_timeouts++;
                } else
                    body_cut_short(r);
            }
            int fd = conn_fd(r);
            r->gone = 1;
            if (fd >= 0)
                shutdown(fd, SHUT_RDWR);
            any = 1;
        }
    h->in_run = 0;
    if (list_empty(&h->susp) && !h->n_upload)
        uv_timer_stop(&h->peek);
    if (any || h->run_again)
        http_run(h);
}

/* ---- the MHD loop -------------------------------------------------------- */

void http_run(struct http *h)
{
    if (h->in_run) {
        h->run_again = 1;
        return;
    }
    h->in_run = 1;
    do {
        h->run_again = 0;
        MHD_run(h->d);
    } while (h->run_again);
    h->in_run = 0;
    http_rearm(h);
}

static void timer_cb(uv_timer_t *t) { http_run(t->data); }

static void poll_cb(uv_poll_t *p, int status, int events) { http_run(p->data); }

static void http_rearm(struct http *h)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(h->d, &ms) == MHD_YES)
        uv_timer_start(&h->timer, timer_cb, ms, 0);
    else
        uv_timer_stop(&h->timer);
}

/* ---- responses ----------------------------------------------------------- */

static void free_cb(void *p) { rc_free(p); }

static ssize_t reader_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct http_req *r = cls;
    if (r->gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    ssize_t n = r->pull(r->h->app.ud, r, buf, max);
    if (n > 0) {
        r->sent += (size_t)n;
        return n;
    }
    if (n == HTTP_PULL_END)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n == HTTP_PULL_ERROR)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    suspend(r);
    return 0;
}

/* Queue r's response; only in an access-handler call where MHD allows it. */
static enum MHD_Result queue(struct http_req *r)
{
    struct MHD_Response *resp;
    if (r->pull)
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, reader_cb, r, NULL);
    else if (r->small_resp)
        resp = MHD_create_response_from_buffer(r->resp_len, r->small, MHD_RESPMEM_MUST_COPY);
    else {
        resp = MHD_create_response_from_buffer_with_free_callback(r->resp_len, r->resp, free_cb);
        if (resp)
            r->resp = NULL; /* MHD owns it now */
    }
    if (!resp)
        return MHD_NO;
    if (r->ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
    for (int i = 0; i < r->nh; i++)
        MHD_add_response_header(resp, r->hname[i], r->hval[i]);
    MHD_add_response_header(resp, "X-Request-Id", r->reqid);
    if (r->h->replica[0])
        MHD_add_response_header(resp, "X-Recurd-Replica", r->h->replica);
    /* With CORS on, every answer depends on the Origin: say so to caches,
     * or one could serve an answer without Allow-Origin to an allowed one. */
    if (r->h->n_cors)
        MHD_add_response_header(resp, "Vary", "Origin");
    if (r->cors) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->cors);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSE);
    }
    if (r->must_close)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (r->pull) {
        /* SSE through proxies: do not buffer, do not cache. */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES) {
        r->queued = 1;
        if (!r->pull)
            r->sent = r->resp_len;
    }
    return ok;
}

static const char *reason(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    }
    return "Error";
}

/* Write r's (whole-buffer) response to the socket ourselves, for when
 * MHD cannot queue one (the body is still arriving), then shut the
 * sending side. Best effort: a small response fits the socket buffer. */
static void write_direct(struct http_req *r)
{
    char head[1024];
    int fd = conn_fd(r);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\nX-Request-Id: %s\r\n",
                     r->status, reason(r->status), r->ctype ? r->ctype : "application/json",
                     r->resp_len, r->reqid);
    if (n > 0 && (size_t)n < sizeof head && r->h->replica[0])
        n += snprintf(head + n, sizeof head - (size_t)n, "X-Recurd-Replica: %s\r\n",
                      r->h->replica);
    if (n > 0 && (size_t)n < sizeof head && r->h->n_cors)
        n += snprintf(head + n, sizeof head - (size_t)n, "Vary: Origin\r\n");
    if (n > 0 && (size_t)n < sizeof head && r->cors)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Access-Control-Allow-Origin: %s\r\n"
                      "Access-Control-Expose-Headers: " CORS_EXPOSE "\r\n", r->cors);
    for (int i = 0; i < r->nh && n > 0 && (size_t)n < sizeof head; i++)
        n += snprintf(head + n, sizeof head - (size_t)n, "%s: %s\r\n", r->hname[i], r->hval[i]);
    if (n > 0 && (size_t)n < sizeof head)
        n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (fd >= 0 && n > 0 && (size_t)n < sizeof head) {
        ssize_t w = send(fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == n && r->resp_len)
            w = send(fd, r->small_resp ? r->small : r->resp, r->resp_len,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        shutdown(fd, SHUT_WR);
    }
}

/* A response while the body is still arriving: MHD cannot queue one in
 * that state, so write it to the socket ourselves, then close lingering. */
static void respond_mid_body(struct http_req *r)
{
    write_direct(r);
    r->queued = 1;
    r->sent = r->resp_len;
    r->lingering = 1;
    r->linger_until = uv_now(r->h->loop) + LINGER_MS;
}

static int set_resp(struct http_req *r, int status, const char *ctype, char *body, size_t len,
                    http_pull_fn pull)
{
    if (r->has_resp) {
        rc_free(body);
        return RC_EINVAL;
    }
    r->has_resp = 1;
    r->status = status;
    r->ctype = ctype;
    r->resp = body;
    r->resp_len = len;
    r->pull = pull;
    /* Outside an MHD callback the connection is suspended waiting: let
     * MHD call the access handler again, which queues it. */
    if (r->suspended && !r->lingering && !r->hold)
        resume(r);
    return 0;
}

void http_hold(struct http_req *r) { r->hold = 1; }

const char *http_held(const struct http_req *r, int *status, size_t *len)
{
    *status = r->has_resp ? r->status : 0;
    *len = r->has_resp ? r->resp_len : 0;
    if (!r->has_resp || r->pull)
        return NULL;
    return r->small_resp ? r->small : r->resp;
}

void http_release_held(struct http_req *r, int send)
{
    r->hold = 0;
    if (!send && r->has_resp && !r->queued) {
        rc_free(r->resp);
        r->resp = NULL;
        r->resp_len = 0;
        r->has_resp = 0;
        r->small_resp = 0;
        r->status = 0;
        r->pull = NULL;
        for (int i = 0; i < r->nh; i++) {
            rc_free(r->hname[i]);
            rc_free(r->hval[i]);
        }
        r->nh = 0;
        return;
    }
    if (r->has_resp && r->suspended && !r->lingering)
        resume(r);
}

int http_respond(struct http_req *r, int status, const char *content_type, char *body,
                 size_t len)
{
    return set_resp(r, status, content_type, body, len, NULL);
}

int http_respond_small(struct http_req *r, int status, const char *content_type,
                       const char *text)
{
    size_t n = strlen(text);
    if (r->has_resp || n >= sizeof r->small)
        return RC_EINVAL;
    memcpy(r->small, text, n + 1);
    r->small_resp = 1;
    return set_resp(r, status, content_type, NULL, n, NULL);
}

int http_respond_stream(struct http_req *r, int status, const char *content_type,
                        http_pull_fn pull)
{
    return set_resp(r, status, content_type, NULL, 0, pull);
}

int http_respond_error(struct http_req *r, const struct api_error *e)
{
    size_t len;
    char *body = api_error_body(e, &len);
    if (!body) {
        return http_respond_small(r, 503, "application/json", OOM_BODY);
    }
    return set_resp(r, api_err_status(e->kind), "application/json", body, len, NULL);
}

int http_add_header(struct http_req *r, const char *name, const char *value)
{
    if (r->nh == MAX_HEADERS)
        return RC_ERANGE;
    char *n = rc_strdup(name), *v = rc_strdup(value);
    if (!n || !v) {
        rc_free(n);
        rc_free(v);
        return RC_ENOMEM;
    }
    r->hname[r->nh] = n;
    r->hval[r->nh++] = v;
    return 0;
}

void http_pause_upload(struct http_req *r) { r->pause_req = 1; }

void http_wake(struct http_req *r)
{
    if (r->suspended && !r->lingering)
        resume(r);
}

/* ---- accessors ----------------------------------------------------------- */

const char *http_method(const struct http_req *r) { return r->method; }
const char *http_path(const struct http_req *r) { return r->path; }
const char *http_header(const struct http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}
const char *http_query(const struct http_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}
int64_t http_content_length(const struct http_req *r)
{
    const char *v = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!v)
        return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || x > INT64_MAX)
        return INT64_MAX; /* unparseable: MHD rejects these itself */
    return (int64_t)x;
}
const char *http_body(const struct http_req *r, size_t *len)
{
    if (len)
        *len = r->len;
    return r->body ? r->body : "";
}
char *http_take_body(struct http_req *r, size_t *len)
{
    char *b = r->body;
    *len = r->len;
    r->body = NULL;
    r->len = r->bcap = 0;
    return b;
}
void http_set_data(struct http_req *r, void *data) { r->data = data; }
void *http_data(const struct http_req *r) { return r->data; }
void http_set_body_cap(struct http_req *r, size_t cap) { r->cap = cap; }
size_t http_body_cap(const struct http_req *r) { return r->cap; }
void http_set_route(struct http_req *r, const char *route) { r->route = route; }
void http_set_log_note(struct http_req *r, const char *note) { r->note = note; }
uint64_t http_started_ns(const struct http_req *r) { return r->t0; }
int http_status(const struct http_req *r) { return r->has_resp ? r->status : 0; }
int http_port(const struct http *h) { return h->port; }

void http_log_in_flight(const struct http *h)
{
    LIST_FOR_EACH (const struct http_req, r, &h->all, all_link) {
        char path[128];
        log_escape(path, sizeof path, r->path ? r->path : "", r->path ? strlen(r->path) : 0);
        log_msg("  in flight: %s \"%s\" %.1fs%s%s%s%s", r->method ? r->method : "?", path,
                (double)(uv_hrtime() - r->t0) * 1e-9, r->suspended ? " suspended" : "",
                r->has_resp ? " answered" : "", r->queued ? " queued" : "",
                r->lingering ? " lingering" : "");
    }
}
int http_in_flight(const struct http *h) { return h->in_flight; }

void http_timeouts(const struct http *h, uint64_t *header, uint64_t *request)
{
    *header = h->header_timeouts;
    *request = h->request_timeouts;
}

/* ---- lingering close of early-answered connections ----------------------- */

static void drain_closed(uv_handle_t *hd)
{
    struct drain *d = hd->data;
    if (--d->closing == 0) {
        close(d->fd);
        rc_free(d);
    }
}

static void drain_end(struct drain *d)
{
    if (d->closing)
        return;
    struct http *h = d->h;
    list_remove(&h->drains, &d->link);
    h->n_drains--;
    d->closing = 2;
    uv_poll_stop(&d->poll);
    uv_timer_stop(&d->timer);
    uv_close((uv_handle_t *)&d->poll, drain_closed);
    uv_close((uv_handle_t *)&d->timer, drain_closed);
}

static void drain_read(uv_poll_t *p, int status, int events)
{
    struct drain *d = p->data;
    char buf[16384];
    (void)events;
    if (status < 0) {
        drain_end(d);
        return;
    }
    for (;;) {
        ssize_t n = recv(d->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            drain_end(d); /* the client sent it all and closed, or reset */
            return;
        }
        if (n < 0)
            break;
        if ((uint64_t)n >= d->left) {
            drain_end(d); /* more than the body could be: stop */
            return;
        }
        d->left -= (uint64_t)n;
    }
    d->idle_until = uv_now(d->h->loop) + EARLY_LINGER_IDLE_MS;
}

static void drain_tick(uv_timer_t *t)
{
    struct drain *d = t->data;
    uint64_t now = uv_now(d->h->loop);
    if (now >= d->until || now >= d->idle_until)
        drain_end(d);
}

/* Keep MHD's socket fd open (a duplicate: MHD closes its own) and read
 * and discard up to left bytes of what the client still sends. */
static void drain_start(struct http *h, int fd, uint64_t left)
{
    /* Each one is a descriptor MHD no longer counts: a quarter of the
     * connection limit keeps them from starving accept() of descriptors. */
    unsigned cap = h->max_connections / 4 ? h->max_connections / 4 : 1;
    if (h->stopping || h->n_drains >= cap)
        return;
    struct drain *d = rc_calloc(1, sizeof *d);
    if (!d)
        return;
    d->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d->fd < 0) {
        rc_free(d);
        return;
    }
    shutdown(d->fd, SHUT_WR); /* the answer is out: say so */
    if (uv_poll_init_socket(h->loop, &d->poll, d->fd) != 0) {
        close(d->fd);
        rc_free(d);
        return;
    }
    uv_timer_init(h->loop, &d->timer);
    d->poll.data = d->timer.data = d;
    d->h = h;
    d->left = left;
    uint64_t now = uv_now(h->loop);
    d->until = now + EARLY_LINGER_MS;
    d->idle_until = now + EARLY_LINGER_IDLE_MS;
    list_push_front(&h->drains, &d->link);
    h->n_drains++;
    uv_poll_start(&d->poll, UV_READABLE | UV_DISCONNECT, drain_read);
    uv_timer_start(&d->timer, drain_tick, 250, 250);
}

/* ---- MHD callbacks ------------------------------------------------------- */

static void too_large(struct http_req *r, size_t cap)
{
    struct api_error e;
    api_error_set(&e, API_PAYLOAD_TOO_LARGE, "request body is larger than the limit %zu bytes",
                  cap);
    http_respond_error(r, &e);
}

static int append_body(struct http_req *r, const char *data, size_t n)
{
    if (r->len + n > r->cap)
        return RC_ERANGE;
    if (r->len + n + 1 > r->bcap) {
        size_t nc = r->bcap ? r->bcap : 4096;
        while (nc < r->len + n + 1)
            nc *= 2;
        if (nc > r->cap + 1)
            nc = r->cap + 1;
        char *nb = rc_realloc(r->body, nc);
        if (!nb)
            return RC_ENOMEM;
        r->body = nb;
        r->bcap = nc;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = 0;
    return 0;
}

static struct http_conn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct http *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        struct http_conn *c = rc_calloc(1, sizeof *c);
        *socket_context = c;
        if (!c)
            return; /* untracked: MHD's idle timeout still applies */
        c->conn = conn;
        c->since = uv_now(h->loop);
        list_push_front(&h->conns, &c->link);
        return;
    }
    /* A connection closing frees a slot: MHD took its listening socket out
     * of epoll at --max-connections (or at the fd limit, "suspending
     * accept()"), and puts it back only at the start of its next run, which
     * nothing else would cause (no event, no timeout): run again now, or
     * the server never accepts another connection. Closes happen inside
     * MHD_run (cleanup), so this is a run-again within http_run. */
    if (h->in_run)
        h->run_again = 1;
    else
        run_soon(h);
    struct http_conn *c = *socket_context;
    if (!c)
        return;
    *socket_context = NULL;
    if (c->linger) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci)
            drain_start(h, ci->connect_fd, c->linger);
    }
    list_remove(&h->conns, &c->link);
    rc_free(c);
}

static void hdr_cb(uv_timer_t *t)
{
    struct http *h = t->data;
    uint64_t now = uv_now(h->loop);
    int cut = 0;
    LIST_FOR_EACH (struct http_conn, c, &h->conns, link) {
        if (c->in_request || c->cut)
            continue;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
            continue;
        if (now - c->since < h->hdr_deadline_ms) {
            /* Between requests, a client that has closed: MHD (edge-
             * triggered epoll) misses a FIN that came with the last
             * request's bytes, and would keep the connection (its slot,
             * its descriptor) until the idle timeout. */
            char b;
            ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
                continue;
        } else
            h->header_timeouts++;
        /* MHD sees the end of the stream and closes it on its next run */
        shutdown(ci->connect_fd, SHUT_RDWR);
        c->cut = 1;
        cut++;
    }
    if (cut)
        http_run(h);
}

/* A request whose own record could not be allocated is answered 503 from
 * static memory; this sentinel then stands for it (its body is discarded). */
static struct http_req oom_req;

static enum MHD_Result oom_answer(struct MHD_Connection *conn, void **con_cls)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        sizeof OOM_BODY - 1, (void *)OOM_BODY, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, "Retry-After", "1");
    enum MHD_Result ok = MHD_queue_response(conn, 503, resp);
    MHD_destroy_response(resp);
    if (ok == MHD_YES) {
        struct http_conn *hc = conn_of(conn);
        if (hc)
            hc->in_request = 1;
        *con_cls = &oom_req;
    }
    return ok;
}

/* ---- framing, request ids, CORS --------------------------------------------- */

struct hdr_count {
    int cl, te;             /* Content-Length / Transfer-Encoding lines */
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct hdr_count *c = cls;
    (void)kind;
    (void)value;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH))
        c->cl++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        c->te++;
    return MHD_YES;
}

/* RFC 9112 6.3: a message whose length is ambiguous cannot be framed
 * safely (request smuggling through a proxy that reads it otherwise):
 * several Content-Length lines, a Content-Length that is not only digits
 * ("5, 5", "+5", "-1"), or Content-Length together with Transfer-Encoding
 * is 400, and several Transfer-Encoding lines too, and Transfer-Encoding
 * in an HTTP/1.0 request (RFC 9112 6.1); a transfer coding other
 * than exactly "chunked" is 501 (we implement no other). MHD 0.9.75 takes
 * the first Content-Length, prefers chunked over Content-Length, and reads
 * an unknown coding until the connection closes. Returns the status for a
 * bad framing, or 0; *msg says why. */
static int framing_error(struct MHD_Connection *conn, const char *version, const char **msg)
{
    struct hdr_count c = {0, 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, count_header, &c);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (c.cl > 1 || c.te > 1) {
        *msg = "more than one Content-Length or Transfer-Encoding header";
        return 400;
    }
    if (cl && te) {
        *msg = "both Content-Length and Transfer-Encoding";
        return 400;
    }
    if (te && version && !strcmp(version, MHD_HTTP_VERSION_1_0)) {
        *msg = "Transfer-Encoding in an HTTP/1.0 request"; /* RFC 9112 6.1: faulty framing */
        return 400;
    }
    if (cl) {
        size_t n = strlen(cl);
        if (n == 0 || n > 19 || strspn(cl, "0123456789") != n) {
            *msg = "Content-Length is not a decimal number";
            return 400;
        }
    }
    if (te && strcasecmp(te, "chunked") != 0) {
        *msg = "the only transfer coding supported is chunked";
        return 501;
    }
    return 0;
}

/* splitmix64: a well-mixed 64-bit value from a counter. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void set_reqid(struct http *h, struct http_req *r)
{
    const char *v = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = v ? strlen(v) : 0;
    if (n > 0 && n <= REQID_MAX && strspn(v, REQID_CHARS) == n) {
        memcpy(r->reqid, v, n + 1);
        return;
    }
    snprintf(r->reqid, sizeof r->reqid, "%016" PRIx64, mix64(h->reqid_seed + h->reqid_next++));
}

/* The Access-Control-Allow-Origin value for this request's Origin, or
 * NULL: the configured entry that matches it exactly, or "*". */
static const char *cors_origin(const struct http *h, struct http_req *r)
{
    if (!h->n_cors)
        return NULL;
    const char *o = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Origin");
    if (!o)
        return NULL;
    for (int i = 0; i < h->n_cors; i++)
        if (!strcmp(h->cors[i], "*") || !strcmp(h->cors[i], o))
            return h->cors[i];
    return NULL;
}

/* A browser's preflight (OPTIONS with Origin and Access-Control-Request-
 * Method), answered here without the API key (browsers never send one on
 * a preflight): 204 and, for an allowed origin, what may be sent. The
 * requested headers are echoed when they are a plain list of header
 * names (the API key is what guards the API, not this list). */
static enum MHD_Result preflight(struct http_req *r)
{
    r->route = "preflight";
    r->dead = 1;
    if (http_respond(r, 204, NULL, NULL, 0) != 0)
        return MHD_NO;
    if (r->cors) {
        const char *rh = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                     "Access-Control-Request-Headers");
        static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                 "0123456789-_, ";
        size_t n = rh ? strlen(rh) : 0;
        int echo = n > 0 && n <= 1024 && strspn(rh, ok) == n;
        if (http_add_header(r, "Access-Control-Allow-Methods", CORS_METHODS) != 0 ||
            http_add_header(r, "Access-Control-Allow-Headers", echo ? rh : CORS_HEADERS) != 0 ||
            http_add_header(r, "Access-Control-Max-Age", CORS_MAX_AGE) != 0)
            return MHD_NO;
    }
    return queue(r);
}

/* Answer r from the HTTP layer, before the app sees it; the connection
 * closes after (its body, if any, is not read). */
static enum MHD_Result refuse(struct http_req *r, int status, const char *msg)
{
    struct api_error e;
    api_error_set(&e, status == 501 ? API_NOT_IMPLEMENTED : API_INVALID_REQUEST, "%s", msg);
    r->dead = 1;
    r->must_close = 1;
    r->route = "framing";
    if (http_respond_error(r, &e) != 0)
        return MHD_NO;
    r->status = status;
    if (queue(r) == MHD_YES)
        return MHD_YES;
    /* MHD answered the request itself already (it rejects some bad
     * Content-Length values on its own, then still calls us): let its
     * answer go out; the connection closes after it. */
    r->queued = 1;
    return MHD_YES;
}

/* A new request, its head just parsed: allocated and counted in flight (NULL when
 * out of memory). */
static struct http_req *request_new(struct http *h, struct MHD_Connection *conn,
                                    const char *url, const char *method)
{
    struct http_req *r = rc_calloc(1, sizeof *r);
    if (r && (!(r->method = rc_strdup(method)) || !(r->path = rc_strdup(url)))) {
        rc_free(r->method);
        rc_free(r);
        r = NULL;
    }
    if (!r)
        return NULL;
    r->h = h;
    r->conn = conn;
    r->cap = h->max_body;
    r->t0 = uv_hrtime();
    r->t0_ms = uv_now(h->loop);
    struct http_conn *hc = conn_of(conn);
    if (hc) {
        hc->in_request = 1;
        hc->linger = 0;
    }
    h->in_flight++;
    list_push_front(&h->all, &r->all_link);
    set_reqid(h, r);
    r->cors = cors_origin(h, r);
    return r;
}

/* The head is in: refuse bad framing, answer a CORS preflight, or let the app
 * decide (on_headers: answer at once, or take the body buffered or streamed). */
static enum MHD_Result request_headers(struct http_req *r, const char *method,
                                       const char *version)
{
    struct http *h = r->h;
    struct MHD_Connection *conn = r->conn;
    const char *why;
    int bad = framing_error(conn, version, &why);
    if (bad)
        return refuse(r, bad, why);
    int64_t cl = http_content_length(r);
    r->has_body = cl > 0 || (cl < 0 && MHD_lookup_connection_value(
                                           conn, MHD_HEADER_KIND,
                                           MHD_HTTP_HEADER_TRANSFER_ENCODING));
    if (h->n_cors && !strcmp(method, "OPTIONS") &&
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin") &&
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Method"))
        return preflight(r);
    int mode = h->app.on_headers(h->app.ud, r);
    if (!r->has_resp) {
        r->mode = mode;
        if (mode == HTTP_BODY_BUFFER && cl >= 0 && (uint64_t)cl > r->cap)
            too_large(r, r->cap);
    }
    if (!r->has_resp && r->has_body) {
        /* watched while it arrives: a FIN MHD misses, a trickle */
        r->upload = 1;
        h->n_upload++;
        peek_start(h);
    }
    if (r->has_resp)
        return queue(r);
    return MHD_YES;
}

/* Answered while the body is still coming (an error mid-upload, or the app):
 * MHD cannot queue now, see respond_mid_body. */
static enum MHD_Result answer_during_upload(struct http_req *r)
{
    respond_mid_body(r);
    suspend(r);
    return MHD_YES;
}

/* Body bytes: buffered (up to the cap), handed to the app (which may take part of
 * them and pause), or discarded once answered. */
static enum MHD_Result request_body_bytes(struct http_req *r, const char *data, size_t *size)
{
    r->rx += *size;
    if (r->has_resp && !r->queued && !r->hold)
        return answer_during_upload(r);
    if (r->has_resp) {
        *size = 0;
        return MHD_YES;
    }
    if (r->mode == HTTP_BODY_BUFFER) {
        int rc = append_body(r, data, *size);
        if (rc != 0) { /* too large, or no memory for the body: answer now */
            if (rc == RC_ERANGE)
                too_large(r, r->cap);
            else {
                struct api_error e;
                api_error_set(&e, API_OUT_OF_MEMORY, "out of memory for the request body");
                http_respond_error(r, &e);
            }
            return answer_during_upload(r);
        }
        *size = 0;
    } else if (r->mode == HTTP_BODY_STREAM) {
        size_t used = r->h->app.on_data(r->h->app.ud, r, data, *size);
        if (used > *size)
            used = *size;
        *size -= used;
        if (r->has_resp && !r->queued && !r->hold)
            return answer_during_upload(r); /* the app answered mid-body */
        if (r->pause_req || *size > 0) {
            r->pause_req = 0;
            suspend(r);
        }
    } else {
        *size = 0;
    }
    return MHD_YES;
}

/* The body is complete: the app gets the request once, and it waits suspended
 * until answered. */
static enum MHD_Result request_body_end(struct http_req *r)
{
    r->body_done = 1;
    upload_end(r);
    if (!r->requested) {
        r->requested = 1;
        r->h->app.on_request(r->h->app.ud, r);
    }
    if (r->has_resp && !r->queued && !r->hold)
        return queue(r);
    if (!r->has_resp || r->hold)
        suspend(r);
    return MHD_YES;
}

/* MHD's access handler: called once with the head (*con_cls NULL), then with each
 * piece of the body (*upload_size > 0), then once more at its end. */
static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    struct http *h = cls;
    struct http_req *r = *con_cls;
    if (r == &oom_req) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r) {
        if (!(r = request_new(h, conn, url, method)))
            return oom_answer(conn, con_cls);
        *con_cls = r;
        return request_headers(r, method, version);
    }
    if (r->dead) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->gone)
        return MHD_NO;
    if (r->lingering)
        return MHD_NO; /* linger over: close */
    if (*upload_size > 0)
        return request_body_bytes(r, upload_data, upload_size);
    return request_body_end(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http *h = cls;
    struct http_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    struct http_conn *hc = conn_of(conn);
    if (hc) { /* the next request's headers are timed from now */
        hc->in_request = 0;
        hc->since = uv_now(h->loop);
    }
    if (r == &oom_req)
        return;
    /* Answered before the body was read (401, 404, 413, 422 ...): MHD
     * closes the connection; discard the body the client is still sending
     * once it does, so that the answer is read rather than reset. */
    if (hc && r->has_body && !r->body_done && !r->gone && !r->dead && r->queued) {
        int64_t cl = http_content_length(r);
        uint64_t left = cl >= 0 && (uint64_t)cl > r->rx ? (uint64_t)cl - r->rx : r->cap;
        hc->linger = left < r->cap ? left : r->cap;
        if (!hc->linger)
            hc->linger = 1;
    }
    /* The client closed its side mid-body and MHD saw it: the socket is
     * still open here, and a client that half-closed still reads. */
    if (r->upload && !r->has_resp && !r->gone && r->mode != HTTP_BODY_STREAM &&
        toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT) {
        body_cut_short(r);
        r->gone = 1;
    }
    if (toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED)
        h->request_timeouts++;
    upload_end(r);
    if (r->suspended) {
        susp_del(r);
        r->suspended = 0;
    }
    int ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (log_requests_on() || (r->has_resp && r->status >= 500)) {
        char path[256];
        log_escape(path, sizeof path, r->path ? r->path : "", r->path ? strlen(r->path) : 0);
        const char *how = ok ? "ok" : r->gone ? "client-gone"
                                    : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                                    : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown"
                                    : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "client-abort"
                                                                                 : "error";
        char meth[24];
        log_escape(meth, sizeof meth, r->method ? r->method : "", r->method ? strlen(r->method) : 0);
        log_msg("%s \"%s\" %d %zu %.1fms %s%s%s id=%s", meth, path, r->has_resp ? r->status : 0,
                r->sent, (double)(uv_hrtime() - r->t0) * 1e-6, how, r->note ? " " : "",
                r->note ? r->note : "", r->reqid);
    }
    /* not in flight any more when the app hears of it (a drain may end) */
    h->in_flight--;
    list_remove(&h->all, &r->all_link);
    if (h->app.on_done)
        h->app.on_done(h->app.ud, r, ok);
    rc_free(r->method);
    rc_free(r->path);
    rc_free(r->body);
    rc_free(r->resp);
    for (int i = 0; i < r->nh; i++) {
        rc_free(r->hname[i]);
        rc_free(r->hval[i]);
    }
    rc_free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512], esc[1024];
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        len--;
    log_msg("mhd: %s", log_escape(esc, sizeof esc, msg, len));
}

/* Why MHD could not listen: is the address taken? (MHD only logs it.) */
static int addr_in_use(const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    int busy = bind(fd, (const struct sockaddr *)ss, len) != 0 && errno == EADDRINUSE;
    close(fd);
    return busy;
}

int http_create(uv_loop_t *loop, const struct http_opts *o, const struct http_app *app,
                struct http **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, o->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)o->port);
    } else if (inet_pton(AF_INET6, o->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)o->port);
        flags |= MHD_USE_IPv6;
    } else
        return rc_fail(err, errlen, RC_EINVAL, "--host '%s' is not a numeric IPv4/IPv6 address",
                       o->host);
    struct http *h = rc_calloc(1, sizeof *h);
    if (!h)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    h->loop = loop;
    h->app = *app;
    h->max_body = o->max_body;
    h->max_connections = o->max_connections;
    h->cors = o->cors_origins;
    h->n_cors = o->n_cors_origins;
    if (o->replica)
        snprintf(h->replica, sizeof h->replica, "%s", o->replica);
    h->min_body_rate = o->min_body_rate;
    h->min_body_grace_ms = (uint64_t)(o->min_body_grace_s * 1000);
    if (os_random_bytes(&h->reqid_seed, sizeof h->reqid_seed) != 0)
        h->reqid_seed = (uint64_t)time(NULL) * 1000003u ^ (uint64_t)getpid() ^ uv_hrtime();
    /* Not MHD_OPTION_LISTENING_ADDRESS_REUSE by default: with it (SO_REUSEPORT)
     * a second server on a busy port starts silently and the kernel splits
     * connections between the two, whose sessions differ. MHD's default,
     * SO_REUSEADDR, still allows a restart over TIME_WAIT connections. */
    h->d = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, on_access, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        h, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, h, MHD_OPTION_CONNECTION_LIMIT,
        o->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, o->max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, o->timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        o->header_bytes, MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
        o->reuse_port ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, (unsigned)1,
        MHD_OPTION_END);
    if (!h->d) {
        rc_free(h);
        if (addr_in_use(&ss))
            return rc_fail(err, errlen, RC_EIO,
                           "cannot listen on %s:%d: address already in use (another server? "
                           "--reuse-port shares a port on purpose)", o->host, o->port);
        return rc_fail(err, errlen, RC_EIO, "cannot listen on %s:%d (address in use or not allowed)",
                       o->host, o->port);
    }
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = pi ? pi->port : o->port;
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!ei || uv_poll_init(loop, &h->poll, ei->epoll_fd) != 0) {
        MHD_stop_daemon(h->d);
        rc_free(h);
        return rc_fail(err, errlen, RC_EIO, "cannot watch the HTTP daemon's epoll fd");
    }
    h->poll.data = h;
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_init(loop, &h->peek);
    h->peek.data = h;
    uv_timer_init(loop, &h->hdr);
    h->hdr.data = h;
    if (o->timeout_s > 0) {
        uint64_t ms = (uint64_t)o->timeout_s * 1000;
        h->hdr_deadline_ms = ms > 2 * HDR_EARLY_MS ? ms - HDR_EARLY_MS : ms / 2;
        uv_timer_start(&h->hdr, hdr_cb, HDR_TICK_MS, HDR_TICK_MS);
    }
    uv_poll_start(&h->poll, UV_READABLE, poll_cb);
    http_rearm(h);
    *out = h;
    return 0;
}

void http_quiesce(struct http *h)
{
    if (h->quiesced)
        return;
    h->quiesced = 1;
    MHD_socket s = MHD_quiesce_daemon(h->d);
    /* External mode: the listening socket is ours to close now. */
    if (s != MHD_INVALID_SOCKET)
        close(s);
}

static void handle_closed(uv_handle_t *hd)
{
    struct http *h = hd->data;
    if (--h->in_run == 0)
        rc_free(h);
}

void http_free(struct http *h)
{
    if (!h)
        return;
    h->stopping = 1;
    while (!list_empty(&h->drains))
        drain_end(LIST_FIRST(&h->drains, struct drain, link));
    /* Suspended connections must be resumed before the daemon stops. */
    while (!list_empty(&h->susp)) {
        struct http_req *r = LIST_FIRST(&h->susp, struct http_req, susp_link);
        r->gone = 1;
        susp_del(r);
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
    h->in_run = 1; /* no re-entry from callbacks during shutdown */
    MHD_run(h->d);
    MHD_stop_daemon(h->d);
    uv_poll_stop(&h->poll);
    /* The handles live in h: it is freed when the last one has closed
     * (the caller keeps running the loop). in_run counts them down. */
    h->in_run = 4;
    uv_close((uv_handle_t *)&h->poll, handle_closed);
    uv_close((uv_handle_t *)&h->timer, handle_closed);
    uv_close((uv_handle_t *)&h->peek, handle_closed);
    uv_close((uv_handle_t *)&h->hdr, handle_closed);
}
