/*
 * http.h — libmicrohttpd driven by a libuv loop, as a small request API.
 *
 * MHD runs in external epoll mode with suspend/resume (shared/docs/
 * DESIGN.md, verified for MHD 0.9.75 + libuv 1.44): a uv_poll watches
 * MHD's epoll fd, a uv_timer is re-armed from MHD_get_timeout() after
 * every MHD_run(), and connections are only ever resumed on the loop
 * thread, followed by an MHD_run(). Everything here runs on the loop
 * thread; nothing blocks.
 *
 * A request goes through the app's callbacks:
 *   on_headers   headers are in: respond at once (401, 404, 413 ...) or pick
 *                how the body is read (none / buffered up to a cap /
 *                streamed piece by piece);
 *   on_data      streamed mode: a piece of the body; may pause the upload
 *                (backpressure) and wake it later with http_wake();
 *   on_request   the body is complete: respond now, or later from any loop
 *                event (the connection waits suspended meanwhile);
 *   on_done      the request is over (sent, failed, or the client went
 *                away): release app data. No http_* call on r after it.
 * Responses are whole buffers or streams pulled through a callback; a
 * stream with nothing to send suspends until http_wake().
 *
 * Dead clients: MHD does not notice a client that closes while its
 * connection is suspended, so suspended requests are polled (a peek at
 * the socket every HTTP_POLL_MS); a gone client ends the request with
 * on_done(completed = 0) within one poll interval.
 *
 * Bodies over the cap: with a Content-Length over the cap, 413 is sent
 * before the body is read. A body that grows past the cap (chunked, or
 * a Content-Length that lied) gets a 413 written straight to the socket,
 * then a lingering close: the rest of the upload is read and discarded
 * for a bounded time so the client sees the 413 instead of a reset.
 *
 * Early answers (queued from on_headers, before the body): MHD sends them
 * and closes; the closed connection's socket is then kept (a dup) and the
 * unread body discarded up to the request's cap, so that clients that send
 * the whole body before reading get the answer instead of a reset.
 *
 * Before the app sees a request, this layer answers by itself:
 *   - ambiguous framing (several Content-Length or Transfer-Encoding lines,
 *     both, a Content-Length that is not digits): 400 + Connection: close;
 *     a transfer coding other than chunked: 501 (RFC 9112 6.3);
 *   - a CORS preflight (OPTIONS + Origin + Access-Control-Request-Method)
 *     when origins are configured: 204, without the app's auth.
 * Every response carries X-Request-Id (the client's, when safe, or a new
 * one) and, for an allowed Origin, Access-Control-Allow-Origin.
 *
 * While a body arrives it is watched every HTTP_POLL_MS: a client that
 * half-closed gets 400 at once (buffered bodies), and a buffered body that
 * averages less than min_body_rate after the grace gets 408.
 *
 * The listener: MHD takes it out of epoll at max_connections (or EMFILE)
 * and puts it back at its next run; a closing connection runs MHD again.
 */
#ifndef RECUR_HTTP_H
#define RECUR_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "apierr.h"

#define HTTP_POLL_MS 50

struct http;
struct http_req;

enum http_body_mode {
    HTTP_BODY_NONE = 0,   /* a body, if any, is discarded */
    HTTP_BODY_BUFFER = 1, /* collected up to the cap, then on_request */
    HTTP_BODY_STREAM = 2, /* handed to on_data as it arrives */
};

/* Pull result for streams (besides a positive byte count). */
#define HTTP_PULL_NONE 0        /* nothing right now: wait for http_wake */
#define HTTP_PULL_END (-1)      /* done, all sent */
#define HTTP_PULL_ERROR (-2)    /* abort the response (connection closed) */

typedef ssize_t (*http_pull_fn)(void *ud, struct http_req *r, char *buf, size_t max);

struct http_app {
    void *ud;
    /* Return the body mode; ignored if a response was queued. */
    int (*on_headers)(void *ud, struct http_req *r);
    /* Streamed body piece; return bytes consumed (less than n only after
     * http_pause_upload(r); the rest comes again after http_wake(r)). */
    size_t (*on_data)(void *ud, struct http_req *r, const char *data, size_t n);
    void (*on_request)(void *ud, struct http_req *r);
    void (*on_done)(void *ud, struct http_req *r, int completed);
};

struct http_opts {
    const char *host;        /* numeric address */
    int port;                /* 0 = any */
    unsigned max_connections;
    unsigned max_connections_per_ip;
    unsigned timeout_s;      /* idle connection timeout */
    size_t header_bytes;     /* MHD per-connection memory */
    size_t max_body;         /* cap for HTTP_BODY_BUFFER */
    int reuse_port;          /* SO_REUSEPORT: share the port with other processes */
    char **cors_origins;     /* allowed Origins ("*" = any); kept, not copied */
    int n_cors_origins;
    uint64_t min_body_rate;  /* bytes/s a body must average after the grace; 0 = off */
    double min_body_grace_s;
    const char *replica;     /* X-Recurd-Replica on every response; NULL = none */
};

/* Start listening on loop. Returns 0 or RC_EIO/RC_ENOMEM with err set. */
int http_create(uv_loop_t *loop, const struct http_opts *o, const struct http_app *app,
                struct http **out, char *err, size_t errlen);
/* Stop the daemon and close every connection (on_done runs for each).
 * Not from inside an http callback. h's uv handles close asynchronously:
 * keep running the loop until it has no handles left; h is freed then. */
void http_free(struct http *h);
int http_port(const struct http *h);
/* Stop accepting new connections; in-flight requests continue. (The
 * SIGTERM drain no longer uses it: /health must answer during a drain.) */
void http_quiesce(struct http *h);
/* Requests started and not yet done; and one log line for each. */
int http_in_flight(const struct http *h);
/* Connections cut because no complete request head arrived within the
 * connection timeout (slowloris, idle), and requests MHD ended on its idle
 * timeout (a body that stopped coming). */
void http_timeouts(const struct http *h, uint64_t *header, uint64_t *request);
void http_log_in_flight(const struct http *h);
/* Run MHD now (after resuming connections from outside MHD callbacks;
 * http_wake and late responses do it themselves). */
void http_run(struct http *h);

/* Request accessors (valid until on_done). */
const char *http_method(const struct http_req *r);
const char *http_path(const struct http_req *r);     /* without the query */
const char *http_header(const struct http_req *r, const char *name);
const char *http_query(const struct http_req *r, const char *key);
/* Content-Length, or -1 when absent (chunked). */
int64_t http_content_length(const struct http_req *r);
const char *http_body(const struct http_req *r, size_t *len);
/* Take the buffered body (rc_malloc'ed, caller frees); NULL if empty. */
char *http_take_body(struct http_req *r, size_t *len);
void http_set_data(struct http_req *r, void *data);
void *http_data(const struct http_req *r);
void http_set_body_cap(struct http_req *r, size_t cap); /* override max_body (on_headers) */
/* The body cap in force (the server's --max-body-bytes until set). */
size_t http_body_cap(const struct http_req *r);
/* Name for the access log line (route pattern, e.g. "/v1/sessions/{id}"). */
void http_set_route(struct http_req *r, const char *route);
void http_set_log_note(struct http_req *r, const char *note); /* static string */

/* Responses. body is rc_malloc'ed and owned by the request from here on
 * (also on failure). Returns 0, or RC_EINVAL if r already has one. */
int http_respond(struct http_req *r, int status, const char *content_type, char *body,
                 size_t len);
/* A short body (< 256 bytes) kept in the request itself: for answers that
 * must go out when nothing more can be allocated (a change already made). */
int http_respond_small(struct http_req *r, int status, const char *content_type,
                       const char *text);
int http_respond_error(struct http_req *r, const struct api_error *e);
/* Adds a header to the response (copied; before http_respond*). */
int http_add_header(struct http_req *r, const char *name, const char *value);
/* A streamed response (chunked encoding); pull is called when MHD can
 * send; HTTP_PULL_NONE suspends until http_wake(r). */
int http_respond_stream(struct http_req *r, int status, const char *content_type,
                        http_pull_fn pull);

/* Hold r's response: one given after this is kept, not sent, until
 * http_release_held. For answers that must wait for something else (the
 * store's acknowledgement) and that the wait needs the bytes of. */
void http_hold(struct http_req *r);
/* The held response's status and body (NULL for a stream or none). */
const char *http_held(const struct http_req *r, int *status, size_t *len);
/* send = 1: send the held response now; 0: forget it (and the headers
 * added for it), so that another can be given. */
void http_release_held(struct http_req *r, int send);

/* In on_data: stop reading the upload after this call. */
void http_pause_upload(struct http_req *r);
/* Data to pull, an upload to continue, or a response ready: resume. */
void http_wake(struct http_req *r);
/* When the request started (uv_hrtime ns). */
uint64_t http_started_ns(const struct http_req *r);
/* Status of the response given so far (0: none yet). */
int http_status(const struct http_req *r);

#endif
