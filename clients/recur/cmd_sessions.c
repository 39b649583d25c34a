/*
 * recur sessions [delete ID...] and recur snapshot save ID FILE / load FILE.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "recur.h"

static int parse_common(struct argp *a, struct conn *c, const char *cmd, int *json,
                        const char **pos, int maxpos, int *npos, void (*usage)(FILE *))
{
    int r;
    while ((r = argp_next(a)) >= 0) {
        if (r == 0) {
            if (*npos >= maxpos) {
                msg("%s: unexpected argument '%s'", cmd, a->arg);
                usage(stderr);
                return EX_USAGE;
            }
            pos[(*npos)++] = a->arg;
        } else if (argp_is(a, "--help", 0) || argp_is(a, "-h", 0)) {
            usage(stdout);
            return -1;
        } else if (argp_conn(a, c)) {
        } else if (json && argp_is(a, "--json", 0)) {
            *json = 1;
        } else {
            msg("%s: unknown option '%s'", cmd, a->arg);
            usage(stderr);
            return EX_USAGE;
        }
        if (a->bad)
            return EX_USAGE;
    }
    return EX_OK;
}

static void sessions_usage(FILE *f)
{
    fprintf(f, "usage: recur sessions [--json]          list your sessions\n"
               "       recur sessions delete ID...      delete sessions\n"
               "  --url, --api-key, --timeout (see recur --help)\n");
}

int cmd_sessions(int argc, char **argv)
{
    struct conn c;
    conn_init(&c);
    struct argp a;
    argp_init(&a, argc, argv);
    const char *pos[256];
    int npos = 0, json = 0;
    int rc = parse_common(&a, &c, "sessions", &json, pos, 256, &npos, sessions_usage);
    if (rc)
        return rc < 0 ? EX_OK : rc;
    if (npos > 0) {
        if (strcmp(pos[0], "delete") || npos < 2) {
            sessions_usage(stderr);
            return EX_USAGE;
        }
        for (int i = 1; i < npos; i++)
            if (check_id("sessions delete", pos[i]))
                return EX_USAGE;
        for (int i = 1; i < npos; i++) {
            int d = session_delete(&c, pos[i]);
            if (d == EX_OK)
                printf("deleted %s\n", pos[i]);
            rc = rc ? rc : d;
            if (d == EX_CONNECT)
                break;
        }
        return rc;
    }
    json_t *out = NULL;
    rc = call_json(&c, "GET", "/v1/sessions", NULL, &out);
    if (rc)
        return rc;
    json_t *data = json_object_get(out, "data");
    if (!json_is_array(data)) {
        msg("GET /v1/sessions: no data list in the reply");
        json_decref(out);
        return EX_SERVER;
    }
    if (json) {
        char *t = json_dumps(data, JSON_INDENT(2));
        if (t)
            printf("%s\n", t);
        free(t);
    } else {
        printf("%-32s %12s %12s %10s %s\n", "id", "position", "state", "expires", "status");
        size_t i;
        json_t *s;
        json_array_foreach(data, i, s) {
            char b[32], d[32];
            fmt_bytes(b, sizeof b, json_number_value(json_object_get(s, "state_bytes")));
            fmt_duration(d, sizeof d, json_number_value(json_object_get(s, "expires_in")));
            printf("%-32s %12lld %12s %10s %s\n",
                   json_string_value(json_object_get(s, "id")) ?: "?",
                   (long long)json_integer_value(json_object_get(s, "position")), b, d,
                   json_is_true(json_object_get(s, "busy"))      ? "busy"
                   : json_is_true(json_object_get(s, "spilled")) ? "spilled"
                                                                  : "idle");
        }
        if (json_array_size(data) == 0)
            fprintf(stderr, "recur: no sessions\n");
    }
    json_decref(out);
    return EX_OK;
}

static void snapshot_usage(FILE *f)
{
    fprintf(f, "usage: recur snapshot save ID FILE    write the session's state to FILE\n"
               "       recur snapshot load FILE       a new session from FILE (prints its id)\n"
               "  --url, --api-key, --timeout (see recur --help)\n");
}

static size_t to_file(const char *p, size_t n, void *ctx)
{
    FILE *f = ctx;
    return fwrite(p, 1, n, f);
}

static size_t from_file(char *p, size_t size, size_t n, void *ctx)
{
    FILE *f = ctx;
    size_t k = fread(p, 1, size * n, f);
    if (k == 0 && ferror(f))
        return CURL_READFUNC_ABORT;
    return k;
}

static int snapshot_save(const struct conn *c, const char *id, const char *file)
{
    char tmp[4200], path[160];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp%ld", file, (long)getpid()) >= sizeof tmp) {
        msg("snapshot save: file name too long");
        return EX_USAGE;
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        msg("snapshot save: cannot create %s: %s", tmp, strerror(errno));
        return EX_LOCAL;
    }
    snprintf(path, sizeof path, "/v1/sessions/%s/state", id);
    struct req q = {.method = "GET", .path = path, .sink = to_file, .sink_ctx = f};
    struct resp r;
    int rc = http_do(c, NULL, &q, &r);
    if (rc == EX_LOCAL)
        msg("snapshot save: writing %s: %s", tmp, strerror(errno));
    else if (rc == EX_OK)
        rc = http_check(&r, "snapshot save");
    buf_free(&r.body);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        if (!rc)
            msg("snapshot save: writing %s: %s", tmp, strerror(errno));
        rc = rc ? rc : EX_LOCAL;
    }
    if (fclose(f) != 0 && !rc) {
        msg("snapshot save: writing %s: %s", tmp, strerror(errno));
        rc = EX_LOCAL;
    }
    if (!rc && rename(tmp, file) != 0) {
        msg("snapshot save: cannot rename %s to %s: %s", tmp, file, strerror(errno));
        rc = EX_LOCAL;
    }
    if (rc) {
        unlink(tmp);
        return rc;
    }
    struct stat st;
    if (stat(file, &st) == 0) {
        char b[32];
        fmt_bytes(b, sizeof b, (double)st.st_size);
        msg("saved session %s to %s (%s)", id, file, b);
    }
    return EX_OK;
}

static int snapshot_load(const struct conn *c, const char *file)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        msg("snapshot load: cannot open %s: %s", file, strerror(errno));
        return EX_LOCAL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        msg("snapshot load: %s is not a regular file", file);
        fclose(f);
        return EX_LOCAL;
    }
    struct req q = {.method = "POST", .path = "/v1/sessions", .ctype = "application/octet-stream",
                    .read = from_file, .read_ctx = f, .read_len = (long long)st.st_size};
    struct resp r;
    int rc = http_do(c, NULL, &q, &r);
    if (rc == EX_LOCAL)
        msg("snapshot load: reading %s failed", file);
    else if (rc == EX_OK)
        rc = http_check(&r, "snapshot load");
    fclose(f);
    if (rc == EX_OK) {
        json_error_t je;
        json_t *j = json_loadb(r.body.p ? r.body.p : "", r.body.n, JSON_ALLOW_NUL, &je);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id) {
            printf("%s\n", id);
            msg("restored %s into session %s (position %lld)", file, id,
                (long long)json_integer_value(json_object_get(j, "position")));
        } else {
            msg("snapshot load: no session id in the reply");
            rc = EX_SERVER;
        }
        json_decref(j);
    }
    buf_free(&r.body);
    return rc;
}

int cmd_snapshot(int argc, char **argv)
{
    struct conn c;
    conn_init(&c);
    struct argp a;
    argp_init(&a, argc, argv);
    const char *pos[4];
    int npos = 0;
    int rc = parse_common(&a, &c, "snapshot", NULL, pos, 4, &npos, snapshot_usage);
    if (rc)
        return rc < 0 ? EX_OK : rc;
    if (npos == 3 && !strcmp(pos[0], "save")) {
        if (check_id("snapshot save", pos[1]))
            return EX_USAGE;
        return snapshot_save(&c, pos[1], pos[2]);
    }
    if (npos == 2 && !strcmp(pos[0], "load"))
        return snapshot_load(&c, pos[1]);
    snapshot_usage(stderr);
    return EX_USAGE;
}
