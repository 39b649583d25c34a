/* The built-in web page (issue 18): GET / and /ui/<file>.
 *
 * The files under server/webui/ are compiled into the binary (cmake/embed.cmake
 * writes webui_assets.c), so the page needs nothing installed beside recurd
 * and makes no request outside this server. They are public, like /health:
 * the page itself asks the user for the API key and sends it with every API
 * call; nothing secret is in them. */
#ifndef RECUR_WEBUI_H
#define RECUR_WEBUI_H

struct http_req;

/* If h is a GET or HEAD of a page asset, answers it (200 with a strict
 * Content-Security-Policy, its Content-Type and a strong ETag, or 304 when
 * If-None-Match names that ETag) and returns 1; otherwise returns 0 and
 * leaves h alone (the API's routes, auth and 404 apply). */
int webui_serve(struct http_req *h);

#endif
