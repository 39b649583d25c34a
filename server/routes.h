/*
 * routes.h — the HTTP API's entry points, for serve.c (implemented by
 * dispatch.c; its private header handlers.h lists the handler files).
 * Loop thread only.
 */
#ifndef RECUR_ROUTES_H
#define RECUR_ROUTES_H

#include "app.h"
#include "http.h"

/* The callbacks http.c runs per request (ud = struct app *). */
extern const struct http_app routes_app;
/* Route templates ("/v1/sessions/{id}"), for metrics labels. */
extern const char *const route_names[];
extern const int n_route_names;
/* A job has news (or is done): wake / answer its request, or clean up. */
void routes_on_job_event(struct app *a, struct job *j);
/* Cancel every running job (drain timeout). */
void routes_cancel_all(struct app *a);
/* struct app's session_ready hook. */
void routes_session_ready(struct app *a, struct list *waiters, enum session_ready status,
                          const char *why);

#endif
