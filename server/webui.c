/* The built-in web page: see webui.h. */
#include "webui.h"

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "http.h"

/* Written by cmake/embed.cmake from server/webui/. */
struct webui_asset {
    const char *path;  /* "/ui/app.js" */
    const char *ctype; /* "text/javascript; charset=utf-8" */
    const unsigned char *data;
    size_t len;
};
extern const struct webui_asset webui_assets[];
extern const size_t webui_n_assets;

/* FNV-1a over the bytes: the ETag changes whenever the file does, so
 * browsers revalidate (no-cache) and get a 304 for an unchanged build. */
static unsigned long long fnv1a(const unsigned char *p, size_t n)
{
    unsigned long long h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

int webui_serve(struct http_req *h)
{
    const char *m = http_method(h);
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0)
        return 0;
    const char *path = http_path(h);
    if (!strcmp(path, "/"))
        path = "/ui/index.html";
    const struct webui_asset *a = NULL;
    for (size_t i = 0; i < webui_n_assets; i++)
        if (!strcmp(path, webui_assets[i].path))
            a = &webui_assets[i];
    if (!a)
        return 0;
    http_set_route(h, "/ui");
    char etag[24];
    snprintf(etag, sizeof etag, "\"%016llx\"", fnv1a(a->data, a->len));
    /* 'self' only: no inline script or style, nothing loaded from another
     * origin. connect-src also allows http(s) so that the page can compare
     * with a second recurd server the user names (that server's CORS
     * decides); scripts still come only from here. */
    http_add_header(h, "Content-Security-Policy",
                    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' http: https:; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    http_add_header(h, "X-Content-Type-Options", "nosniff");
    http_add_header(h, "Referrer-Policy", "no-referrer");
    http_add_header(h, "Cache-Control", "no-cache");
    http_add_header(h, "ETag", etag);
    const char *inm = http_header(h, "If-None-Match");
    if (inm && strstr(inm, etag)) {
        http_respond_small(h, 304, NULL, "");
        return 1;
    }
    char *body = rc_malloc(a->len ? a->len : 1);
    if (!body) {
        http_respond_small(h, 503, "text/plain", "out of memory\n");
        return 1;
    }
    memcpy(body, a->data, a->len);
    http_respond(h, 200, a->ctype, body, a->len);
    return 1;
}
