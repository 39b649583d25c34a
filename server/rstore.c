#include "rstore.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "alloc.h"
#include "errors.h"

struct rstore {
    char host[256];
    int port;
    int db;
    int timeout_ms;
    uint64_t lease_ms;
    int audit;
    char replica[RSTORE_REPLICA_MAX + 1];
    char fp[17];              /* model fingerprint, hex */
    char lease_ms_s[24];
    char ttl_ms_s[24];        /* a session's keys expire this long after their last write */
    atomic_uint_fast64_t snap_seq; /* new snapshot keys: unique within an epoch */
};

/* ---- scripts ----------------------------------------------------------------
 * Every check and write of one operation is one script: Redis runs it
 * atomically, so a lease checked is still held when the write lands. */

/* KEYS meta lease | ARGV replica owner created pos lease_ms snapkey ttl */
static const char LUA_CREATE[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end\n"
    "redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'pos', ARGV[4], 'epoch', 1, 'snap', ARGV[6],"
    " 'snap_pos', ARGV[4], 'log_pos', ARGV[4], 'created', ARGV[3], 'fenced', 0, 'commits', 0)\n"
    "redis.call('SET', KEYS[2], ARGV[1] .. ' 1', 'PX', ARGV[5])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[7])\n"
    "return {'OK', 1}\n";

/* KEYS meta lease log | ARGV replica owner lease_ms ttl */
static const char LUA_ACQUIRE[] =
    "local m = redis.call('HMGET', KEYS[1], 'owner', 'pos', 'snap', 'snap_pos', 'created')\n"
    "if not m[1] or m[1] ~= ARGV[2] then return {'NOTFOUND'} end\n"
    "local l = redis.call('GET', KEYS[2])\n"
    "if l then\n"
    "  local h = string.match(l, '^(%S+) ')\n"
    "  if h ~= ARGV[1] then return {'BUSY', h or ''} end\n"
    "end\n"
    "local e = redis.call('HINCRBY', KEYS[1], 'epoch', 1)\n"
    "redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. e, 'PX', ARGV[3])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[4])\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[4])\n"
    "if m[3] ~= '' then redis.call('PEXPIRE', m[3], ARGV[4]) end\n"
    "return {'OK', e, m[2], m[3], m[4], m[5]}\n";

/* KEYS meta lease log idem audit | ARGV replica epoch expected entry n
 * answer idem_ttl lease_ms audit ttl */
static const char LUA_COMMIT[] =
    "local l = redis.call('GET', KEYS[2])\n"
    "if l ~= ARGV[1] .. ' ' .. ARGV[2] then\n"
    "  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'fenced', 1) end\n"
    "  return {'FENCED', l or ''}\n"
    "end\n"
    "local pos = tonumber(redis.call('HGET', KEYS[1], 'pos'))\n"
    "if not pos then return {'FENCED', 'deleted or expired'} end\n"
    "if pos ~= tonumber(ARGV[3]) then return {'POSITION', pos} end\n"
    "local np = pos + tonumber(ARGV[5])\n"
    "if tonumber(ARGV[5]) > 0 then redis.call('RPUSH', KEYS[3], ARGV[4]) end\n"
    "redis.call('HSET', KEYS[1], 'pos', np)\n"
    "redis.call('HINCRBY', KEYS[1], 'commits', 1)\n"
    "if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[7]) end\n"
    "if ARGV[9] == '1' then\n"
    "  redis.call('RPUSH', KEYS[5], ARGV[2] .. ' ' .. ARGV[1] .. ' ' .. pos .. ' ' .. np)\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[8])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[10])\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[10])\n"
    "if ARGV[9] == '1' then redis.call('PEXPIRE', KEYS[5], ARGV[10]) end\n"
    "local s = redis.call('HGET', KEYS[1], 'snap')\n"
    "if s and s ~= '' then redis.call('PEXPIRE', s, ARGV[10]) end\n"
    "return {'OK', np}\n";

/* KEYS meta lease log audit | ARGV replica epoch newkey snap_pos mode
 * expected audit ttl */
static const char LUA_SWAP[] =
    "local l = redis.call('GET', KEYS[2])\n"
    "if l ~= ARGV[1] .. ' ' .. ARGV[2] then\n"
    "  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'fenced', 1) end\n"
    "  redis.call('DEL', ARGV[3])\n"
    "  return {'FENCED', l or ''}\n"
    "end\n"
    "local m = redis.call('HMGET', KEYS[1], 'pos', 'snap', 'log_pos')\n"
    "if not m[1] then\n"
    "  redis.call('DEL', ARGV[3])\n"
    "  return {'FENCED', 'deleted or expired'}\n"
    "end\n"
    "local pos, old, lp = tonumber(m[1]), m[2], tonumber(m[3])\n"
    "local sp = tonumber(ARGV[4])\n"
    "if ARGV[5] == 'reset' then\n"
    "  if tonumber(ARGV[6]) >= 0 and pos ~= tonumber(ARGV[6]) then\n"
    "    redis.call('DEL', ARGV[3])\n"
    "    return {'POSITION', pos}\n"
    "  end\n"
    "  redis.call('DEL', KEYS[3])\n"
    "  redis.call('HSET', KEYS[1], 'pos', sp, 'log_pos', sp, 'snap', ARGV[3], 'snap_pos', sp)\n"
    "  if ARGV[7] == '1' then\n"
    "    redis.call('RPUSH', KEYS[4], ARGV[2] .. ' ' .. ARGV[1] .. ' ' .. pos .. ' ' .. sp .. ' reset')\n"
    "  end\n"
    "else\n"
    "  if sp > pos or sp < lp then\n"
    "    redis.call('DEL', ARGV[3])\n"
    "    return {'POSITION', pos}\n"
    "  end\n"
    "  while lp < sp do\n"
    "    local e = redis.call('LINDEX', KEYS[3], 0)\n"
    "    if not e then break end\n"
    "    local n = (string.len(e) - 32) / 4\n"
    "    if lp + n > sp then break end\n"
    "    redis.call('LPOP', KEYS[3])\n"
    "    lp = lp + n\n"
    "  end\n"
    "  if lp ~= sp then\n"
    "    redis.call('DEL', ARGV[3])\n"
    "    return {'POSITION', pos}\n"
    "  end\n"
    "  redis.call('HSET', KEYS[1], 'log_pos', lp, 'snap', ARGV[3], 'snap_pos', sp)\n"
    "end\n"
    "if old and old ~= '' and old ~= ARGV[3] then redis.call('DEL', old) end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[8])\n"
    "redis.call('PEXPIRE', KEYS[3], ARGV[8])\n"
    "return {'OK', sp}\n";

/* KEYS meta lease | ARGV replica epoch pos lease_ms */
static const char LUA_RENEW[] =
    "local l = redis.call('GET', KEYS[2])\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then\n"
    "  if l == ARGV[1] .. ' ' .. ARGV[2] then redis.call('DEL', KEYS[2]) end\n"
    "  return {'LOST', 'deleted or expired'}\n"
    "end\n"
    "if l == ARGV[1] .. ' ' .. ARGV[2] then\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[4])\n"
    "  return {'OK', tonumber(ARGV[2])}\n"
    "end\n"
    "if l then return {'LOST', l} end\n"
    "local m = redis.call('HMGET', KEYS[1], 'epoch', 'pos')\n"
    "if not m[1] then return {'LOST', 'deleted'} end\n"
    "if tonumber(m[1]) ~= tonumber(ARGV[2]) or tonumber(m[2]) ~= tonumber(ARGV[3]) then\n"
    "  return {'LOST', 'taken and given back meanwhile'}\n"
    "end\n"
    "local e = redis.call('HINCRBY', KEYS[1], 'epoch', 1)\n"
    "redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. e, 'PX', ARGV[4])\n"
    "return {'RETAKEN', e}\n";

/* KEYS lease | ARGV "replica epoch" */
static const char LUA_RELEASE[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

/* KEYS meta lease log | ARGV "replica epoch" */
static const char LUA_DELETE[] =
    "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'FENCED'} end\n"
    "local s = redis.call('HGET', KEYS[1], 'snap')\n"
    "if s and s ~= '' then redis.call('DEL', s) end\n"
    "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])\n"
    "return {'OK'}\n";

/* ---- connections -------------------------------------------------------- */

static __thread redisContext *tl_c;
static __thread const struct rstore *tl_store;

void rstore_thread_close(void)
{
    if (tl_c)
        redisFree(tl_c);
    tl_c = NULL;
    tl_store = NULL;
}

static struct timeval tv_of(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static redisContext *connect_to(const struct rstore *r, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv_of(r->timeout_ms));
    if (!c || c->err) {
        rc_fail(err, errlen, RC_EUNAVAILABLE, "the store redis://%s:%d is unreachable: %s",
                r->host, r->port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv_of(r->timeout_ms));
    if (r->db) {
        redisReply *y = redisCommand(c, "SELECT %d", r->db);
        int bad = !y || y->type == REDIS_REPLY_ERROR;
        if (bad)
            rc_fail(err, errlen, RC_EUNAVAILABLE, "the store: SELECT %d failed: %s", r->db,
                    y ? y->str : c->errstr);
        if (y)
            freeReplyObject(y);
        if (bad) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

static redisContext *conn(const struct rstore *r, char *err, size_t errlen)
{
    if (tl_c && tl_store == r && !tl_c->err)
        return tl_c;
    rstore_thread_close();
    tl_c = connect_to(r, err, errlen);
    if (tl_c)
        tl_store = r;
    return tl_c;
}

/* One command; NULL (err set, the connection dropped when it failed) or a
 * reply that is not an error. */
static redisReply *cmdv(const struct rstore *r, int argc, const char **argv, const size_t *lens,
                        char *err, size_t errlen)
{
    redisContext *c = conn(r, err, errlen);
    if (!c)
        return NULL;
    redisReply *y = redisCommandArgv(c, argc, argv, lens);
    if (!y) {
        rc_fail(err, errlen, RC_EUNAVAILABLE, "the store did not answer: %s",
                c->errstr[0] ? c->errstr : "connection lost");
        rstore_thread_close();
        return NULL;
    }
    if (y->type == REDIS_REPLY_ERROR) {
        rc_fail(err, errlen, RC_EUNAVAILABLE, "the store refused %s: %.200s", argv[0], y->str);
        freeReplyObject(y);
        return NULL;
    }
    return y;
}

/* A command's arguments (at most 24), each a string or bytes. */
struct args {
    const char *v[24];
    size_t len[24];
    int n;
    char num[8][24];
    int nnum;
};

static void arg(struct args *a, const char *s) { a->v[a->n] = s, a->len[a->n++] = strlen(s); }
static void argb(struct args *a, const void *p, size_t n)
{
    a->v[a->n] = p ? p : "";
    a->len[a->n++] = n;
}
static void argi(struct args *a, int64_t x)
{
    snprintf(a->num[a->nnum], sizeof a->num[0], "%" PRId64, x);
    arg(a, a->num[a->nnum++]);
}

static redisReply *run(const struct rstore *r, struct args *a, char *err, size_t errlen)
{
    return cmdv(r, a->n, a->v, a->len, err, errlen);
}

/* EVAL script with nkeys keys: a->v holds keys then args after slot 3. */
static void eval_begin(struct args *a, const char *script, int nkeys)
{
    a->n = a->nnum = 0;
    arg(a, "EVAL");
    arg(a, script);
    argi(a, nkeys);
}

struct keys {
    char meta[96], lease[96], log[96], audit[96], base[80];
};

static void keys_of(const struct rstore *r, const char *sid, struct keys *k)
{
    snprintf(k->base, sizeof k->base, "recurd:%s:{%s}", r->fp, sid);
    snprintf(k->meta, sizeof k->meta, "%s:meta", k->base);
    snprintf(k->lease, sizeof k->lease, "%s:lease", k->base);
    snprintf(k->log, sizeof k->log, "%s:log", k->base);
    snprintf(k->audit, sizeof k->audit, "%s:audit", k->base);
}

static void owner_key(const struct rstore *r, uint64_t owner, char *out, size_t n)
{
    snprintf(out, n, "recurd:%s:owner:%016" PRIx64, r->fp, owner);
}

/* A script's status word: reply->element[0]. */
static int status_is(const redisReply *y, const char *s)
{
    return y->type == REDIS_REPLY_ARRAY && y->elements > 0 &&
           (y->element[0]->type == REDIS_REPLY_STRING || y->element[0]->type == REDIS_REPLY_STATUS) &&
           y->element[0]->str && !strcmp(y->element[0]->str, s);
}

static int64_t elem_int(const redisReply *y, size_t i)
{
    if (y->type != REDIS_REPLY_ARRAY || i >= y->elements)
        return 0;
    const redisReply *e = y->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

static const char *elem_str(const redisReply *y, size_t i)
{
    if (y->type != REDIS_REPLY_ARRAY || i >= y->elements)
        return "";
    const redisReply *e = y->element[i];
    return (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) && e->str ? e->str : "";
}

/* A command of 1-4 plain string arguments; the reply (NULL: err set). */
static redisReply *simple(const struct rstore *r, char *err, size_t errlen, const char *a0,
                          const char *a1, const char *a2, const char *a3)
{
    struct args a = {0};
    const char *v[] = {a0, a1, a2, a3};
    for (int i = 0; i < 4 && v[i]; i++)
        arg(&a, v[i]);
    return run(r, &a, err, errlen);
}

/* The same when only whether it was answered matters. */
static int simple_ok(const struct rstore *r, char *err, size_t errlen, const char *a0,
                     const char *a1, const char *a2)
{
    redisReply *y = simple(r, err, errlen, a0, a1, a2, NULL);
    if (!y)
        return RC_EUNAVAILABLE;
    freeReplyObject(y);
    return 0;
}

/* A write script's refusals: FENCED (the lease is another's) and
 * POSITION (*cur_pos: the store has the session elsewhere); OK is 0. */
static int write_status(const redisReply *y, const char *what, int64_t *cur_pos, char *err,
                        size_t errlen)
{
    if (status_is(y, "OK"))
        return 0;
    if (status_is(y, "FENCED"))
        return rc_fail(err, errlen, RC_EFENCED,
                       "this replica's lease on the session was taken over (now: '%.80s')",
                       elem_str(y, 1));
    if (status_is(y, "POSITION")) {
        *cur_pos = elem_int(y, 1);
        return rc_fail(err, errlen, RC_ECONFLICT, "the store has the session at %" PRId64,
                       *cur_pos);
    }
    return rc_fail(err, errlen, RC_EUNAVAILABLE, "the store's %s answered oddly", what);
}

/* "<replica> <epoch>": a lease's value. */
static void lease_value(const struct rstore *r, uint64_t epoch, char *out, size_t n)
{
    snprintf(out, n, "%s %" PRIu64, r->replica, epoch);
}

/* ---- opening -------------------------------------------------------------- */

static int valid_replica(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RSTORE_REPLICA_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':'))
            return 0;
    }
    return 1;
}

int rstore_open(const struct rstore_opts *o, struct rstore **out, char *err, size_t errlen)
{
    *out = NULL;
    static const char pre[] = "redis://";
    const char *u = o->url;
    if (strncmp(u, pre, sizeof pre - 1) != 0)
        return rc_fail(err, errlen, RC_EINVAL, "--store: expected redis://HOST:PORT[/DB], got '%.100s'", u);
    u += sizeof pre - 1;
    struct rstore *r = rc_calloc(1, sizeof *r);
    if (!r)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    const char *host = u, *hend;
    if (*u == '[') { /* [v6] */
        host = u + 1;
        hend = strchr(host, ']');
        u = hend ? hend + 1 : host;
    } else {
        hend = u + strcspn(u, ":/");
        u = hend;
    }
    size_t hn = hend ? (size_t)(hend - host) : 0;
    r->port = 6379;
    char *end = NULL;
    if (hend && *u == ':') {
        long p = strtol(u + 1, &end, 10);
        if (end == u + 1 || p < 1 || p > 65535)
            goto bad;
        r->port = (int)p;
        u = end;
    }
    if (hend && *u == '/' && u[1]) {
        long d = strtol(u + 1, &end, 10);
        if (end == u + 1 || *end || d < 0 || d > 1000)
            goto bad;
        r->db = (int)d;
        u = end;
    } else if (hend && *u == '/')
        u++;
    if (!hend || hn == 0 || hn >= sizeof r->host || *u)
        goto bad;
    memcpy(r->host, host, hn);
    if (!valid_replica(o->replica)) {
        rc_free(r);
        return rc_fail(err, errlen, RC_EINVAL,
                       "--replica-id: 1-%d characters of [A-Za-z0-9._:-], got '%.80s'",
                       RSTORE_REPLICA_MAX, o->replica);
    }
    snprintf(r->replica, sizeof r->replica, "%s", o->replica);
    r->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 2000;
    r->lease_ms = o->lease_ms;
    snprintf(r->lease_ms_s, sizeof r->lease_ms_s, "%" PRIu64, o->lease_ms);
    snprintf(r->ttl_ms_s, sizeof r->ttl_ms_s, "%" PRIu64, o->ttl_ms ? o->ttl_ms : 3600000);
    r->audit = o->audit;
    snprintf(r->fp, sizeof r->fp, "0000000000000000");
    *out = r;
    return 0;
bad:
    rc_free(r);
    return rc_fail(err, errlen, RC_EINVAL, "--store: expected redis://HOST:PORT[/DB], got '%.100s'",
                   o->url);
}

void rstore_free(struct rstore *r) { rc_free(r); }

void rstore_set_model(struct rstore *r, uint64_t fp)
{
    snprintf(r->fp, sizeof r->fp, "%016" PRIx64, fp);
}

const char *rstore_replica(const struct rstore *r) { return r->replica; }
uint64_t rstore_lease_ms(const struct rstore *r) { return r->lease_ms; }

int rstore_ping(struct rstore *r, char *err, size_t errlen)
{
    return simple_ok(r, err, errlen, "PING", NULL, NULL);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- sessions ------------------------------------------------------------- */

static void snap_key(struct rstore *r, const struct keys *k, uint64_t epoch, char *out, size_t n)
{
    uint64_t seq = atomic_fetch_add(&r->snap_seq, 1) + 1;
    snprintf(out, n, "%s:snap:%" PRIu64 ".%" PRIu64, k->base, epoch, seq);
}

static int set_bytes(struct rstore *r, const char *key, const uint8_t *p, size_t n, char *err,
                     size_t errlen)
{
    struct args a = {0};
    arg(&a, "SET");
    arg(&a, key);
    argb(&a, p, n);
    arg(&a, "PX");
    arg(&a, r->ttl_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    freeReplyObject(y);
    return 0;
}

static void del_key(struct rstore *r, const char *key)
{
    simple_ok(r, NULL, 0, "DEL", key, NULL);
}

int rstore_create(struct rstore *r, const char *sid, uint64_t owner, double created,
                  const uint8_t *snap, size_t snap_len, int64_t pos, uint64_t *epoch, char *err,
                  size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    char sk[128] = "", own[24], ok[96], cr[32];
    if (snap) {
        snap_key(r, &k, 1, sk, sizeof sk);
        if (set_bytes(r, sk, snap, snap_len, err, errlen) != 0)
            return RC_EUNAVAILABLE;
    }
    snprintf(own, sizeof own, "%016" PRIx64, owner);
    snprintf(cr, sizeof cr, "%.3f", created);
    struct args a;
    eval_begin(&a, LUA_CREATE, 2);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, r->replica);
    arg(&a, own);
    arg(&a, cr);
    argi(&a, pos);
    arg(&a, r->lease_ms_s);
    arg(&a, sk);
    arg(&a, r->ttl_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    int rc = 0;
    if (status_is(y, "EXISTS"))
        rc = rc_fail(err, errlen, RC_EEXIST, "session %s exists", sid);
    else if (!status_is(y, "OK"))
        rc = rc_fail(err, errlen, RC_EUNAVAILABLE, "the store's create answered oddly");
    freeReplyObject(y);
    if (rc) {
        if (sk[0] && rc != RC_EEXIST)
            del_key(r, sk);
        return rc;
    }
    *epoch = 1;
    owner_key(r, owner, ok, sizeof ok);
    simple_ok(r, NULL, 0, "SADD", ok, sid); /* the listing index only: the session is made */
    return 0;
}

void rstore_session_free(struct rstore_session *s)
{
    rc_free(s->snap);
    rc_free(s->ids);
    s->snap = NULL;
    s->ids = NULL;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

/* The log's entries, checked (size, magic, checksum, one after the other
 * from `from`), into out->ids. */
static int read_log(const redisReply *lg, int64_t from, int64_t to, struct rstore_session *out,
                    char *err, size_t errlen)
{
    if (lg->type != REDIS_REPLY_ARRAY)
        return rc_fail(err, errlen, RC_EFORMAT, "the session's log is not a list");
    if (to < from)
        return rc_fail(err, errlen, RC_EFORMAT, "the session's position is before its snapshot");
    size_t total = (size_t)(to - from);
    out->ids = rc_malloc((total ? total : 1) * sizeof(int32_t));
    if (!out->ids)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory for the session's log");
    int64_t at = from;
    size_t k = 0;
    for (size_t i = 0; i < lg->elements; i++) {
        const redisReply *e = lg->element[i];
        const uint8_t *p = (const uint8_t *)e->str;
        size_t len = e->type == REDIS_REPLY_STRING ? e->len : 0;
        if (len < RSTORE_LOG_HEADER + RSTORE_LOG_TRAILER || memcmp(p, "RLG1", 4) != 0)
            return rc_fail(err, errlen, RC_EFORMAT, "log entry %zu is not a log entry", i);
        uint32_t n = get_u32(p + 4);
        if ((len - RSTORE_LOG_HEADER - RSTORE_LOG_TRAILER) / 4 != n ||
            (len - RSTORE_LOG_HEADER - RSTORE_LOG_TRAILER) % 4)
            return rc_fail(err, errlen, RC_EFORMAT, "log entry %zu has the wrong length", i);
        if (XXH3_64bits(p, len - RSTORE_LOG_TRAILER) != get_u64(p + len - RSTORE_LOG_TRAILER))
            return rc_fail(err, errlen, RC_ECHECKSUM, "log entry %zu is damaged (checksum)", i);
        if ((int64_t)get_u64(p + 8) != at)
            return rc_fail(err, errlen, RC_EFORMAT,
                           "log entry %zu starts at %" PRId64 ", expected %" PRId64, i,
                           (int64_t)get_u64(p + 8), at);
        if (k + n > total)
            return rc_fail(err, errlen, RC_EFORMAT, "the log runs past the session's position");
        for (uint32_t t = 0; t < n; t++)
            out->ids[k + t] = (int32_t)get_u32(p + RSTORE_LOG_HEADER + 4 * (size_t)t);
        k += n;
        at += n;
    }
    if (k != total)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "the log ends at %" PRId64 " but the session is at %" PRId64, at, to);
    out->n_ids = k;
    return 0;
}

int rstore_acquire(struct rstore *r, const char *sid, uint64_t owner, struct rstore_session *out,
                   char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct keys k;
    keys_of(r, sid, &k);
    char own[24];
    snprintf(own, sizeof own, "%016" PRIx64, owner);
    double t0 = mono_s();
    struct args a;
    eval_begin(&a, LUA_ACQUIRE, 3);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, k.log);
    arg(&a, r->replica);
    arg(&a, own);
    arg(&a, r->lease_ms_s);
    arg(&a, r->ttl_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    if (status_is(y, "NOTFOUND")) {
        freeReplyObject(y);
        return rc_fail(err, errlen, RC_ENOENT, "no session %s", sid);
    }
    if (status_is(y, "BUSY")) {
        snprintf(out->holder, sizeof out->holder, "%s", elem_str(y, 1));
        freeReplyObject(y);
        return rc_fail(err, errlen, RC_EBUSY, "session %s is held by replica %s", sid,
                       out->holder);
    }
    if (!status_is(y, "OK") || y->elements < 6) {
        freeReplyObject(y);
        return rc_fail(err, errlen, RC_EUNAVAILABLE, "the store's acquire answered oddly");
    }
    out->epoch = (uint64_t)elem_int(y, 1);
    out->pos = elem_int(y, 2);
    char snap[160];
    snprintf(snap, sizeof snap, "%s", elem_str(y, 3));
    out->snap_pos = elem_int(y, 4);
    out->created = strtod(elem_str(y, 5), NULL);
    freeReplyObject(y);
    double t1 = mono_s();
    out->lease_s = t1 - t0;

    /* the lease is ours: nothing changes under us while we read */
    redisContext *c = conn(r, err, errlen);
    if (!c)
        return RC_EUNAVAILABLE;
    if (snap[0])
        redisAppendCommand(c, "GET %s", snap);
    redisAppendCommand(c, "LRANGE %s 0 -1", k.log);
    redisReply *sy = NULL, *ly = NULL;
    int rc = 0;
    if (snap[0] && redisGetReply(c, (void **)&sy) != REDIS_OK)
        rc = RC_EUNAVAILABLE;
    if (!rc && redisGetReply(c, (void **)&ly) != REDIS_OK)
        rc = RC_EUNAVAILABLE;
    if (rc) {
        rc_fail(err, errlen, rc, "the store did not answer: %s", c->errstr);
        rstore_thread_close();
    } else if (snap[0] && (!sy || sy->type != REDIS_REPLY_STRING)) {
        rc = rc_fail(err, errlen, RC_EFORMAT, "the session's snapshot %s is missing from the store",
                     snap);
    } else {
        if (snap[0]) {
            out->snap = rc_malloc(sy->len ? sy->len : 1);
            if (!out->snap)
                rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory for the snapshot");
            else {
                memcpy(out->snap, sy->str, sy->len);
                out->snap_len = sy->len;
            }
        }
        if (!rc)
            rc = read_log(ly, out->snap_pos, out->pos, out, err, errlen);
    }
    if (sy)
        freeReplyObject(sy);
    if (ly)
        freeReplyObject(ly);
    out->fetch_s = mono_s() - t1;
    if (rc) {
        char e2[8];
        if (rc != RC_EUNAVAILABLE)
            rstore_release(r, sid, out->epoch, e2, sizeof e2);
        rstore_session_free(out);
    }
    return rc;
}

int rstore_commit(struct rstore *r, const char *sid, uint64_t epoch, int64_t expected_pos,
                  const int32_t *ids, size_t n, const char *idem_hex, const void *answer,
                  size_t answer_len, int64_t *cur_pos, char *err, size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    size_t elen = RSTORE_LOG_HEADER + 4 * n + RSTORE_LOG_TRAILER;
    uint8_t *e = rc_malloc(elen);
    if (!e)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory for a log entry");
    memcpy(e, "RLG1", 4);
    put_u32(e + 4, (uint32_t)n);
    put_u64(e + 8, (uint64_t)expected_pos);
    put_u32(e + 16, (uint32_t)epoch);
    put_u32(e + 20, 0);
    for (size_t i = 0; i < n; i++)
        put_u32(e + RSTORE_LOG_HEADER + 4 * i, (uint32_t)ids[i]);
    put_u64(e + elen - RSTORE_LOG_TRAILER, XXH3_64bits(e, elen - RSTORE_LOG_TRAILER));
    char idem[160], ttl[24];
    snprintf(idem, sizeof idem, "%s:idem:%s", k.base, idem_hex ? idem_hex : "-");
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)RSTORE_IDEM_TTL_MS);
    struct args a;
    eval_begin(&a, LUA_COMMIT, 5);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, k.log);
    arg(&a, idem);
    arg(&a, k.audit);
    arg(&a, r->replica);
    argi(&a, (int64_t)epoch);
    argi(&a, expected_pos);
    argb(&a, e, elen);
    argi(&a, (int64_t)n);
    if (idem_hex)
        argb(&a, answer, answer_len);
    else
        arg(&a, "");
    arg(&a, ttl);
    arg(&a, r->lease_ms_s);
    arg(&a, r->audit ? "1" : "0");
    arg(&a, r->ttl_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    rc_free(e);
    if (!y)
        return RC_EUNAVAILABLE;
    int rc = write_status(y, "commit", cur_pos, err, errlen);
    if (rc == 0)
        *cur_pos = elem_int(y, 1);
    freeReplyObject(y);
    return rc;
}

int rstore_put_snapshot(struct rstore *r, const char *sid, uint64_t epoch, const uint8_t *snap,
                        size_t len, int64_t snap_pos, int reset, int64_t expected_pos,
                        char *err, size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    char sk[128];
    snap_key(r, &k, epoch, sk, sizeof sk);
    if (set_bytes(r, sk, snap, len, err, errlen) != 0)
        return RC_EUNAVAILABLE;
    struct args a;
    eval_begin(&a, LUA_SWAP, 4);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, k.log);
    arg(&a, k.audit);
    arg(&a, r->replica);
    argi(&a, (int64_t)epoch);
    arg(&a, sk);
    argi(&a, snap_pos);
    arg(&a, reset ? "reset" : "trim");
    argi(&a, expected_pos);
    arg(&a, r->audit ? "1" : "0");
    arg(&a, r->ttl_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    if (!y) {
        del_key(r, sk);
        return RC_EUNAVAILABLE;
    }
    int64_t at;
    int rc = write_status(y, "snapshot swap", &at, err, errlen);
    freeReplyObject(y);
    return rc;
}

int rstore_renew(struct rstore *r, const char *sid, uint64_t *epoch, int64_t pos, char *err,
                 size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    struct args a;
    eval_begin(&a, LUA_RENEW, 2);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, r->replica);
    argi(&a, (int64_t)*epoch);
    argi(&a, pos);
    arg(&a, r->lease_ms_s);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    int rc = 0;
    if (status_is(y, "OK"))
        ;
    else if (status_is(y, "RETAKEN"))
        *epoch = (uint64_t)elem_int(y, 1);
    else
        rc = rc_fail(err, errlen, RC_EFENCED, "lease lost (%.80s)", elem_str(y, 1));
    freeReplyObject(y);
    return rc;
}

int rstore_release(struct rstore *r, const char *sid, uint64_t epoch, char *err, size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    char me[RSTORE_REPLICA_MAX + 24];
    lease_value(r, epoch, me, sizeof me);
    struct args a;
    eval_begin(&a, LUA_RELEASE, 1);
    arg(&a, k.lease);
    arg(&a, me);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    freeReplyObject(y);
    return 0;
}

int rstore_delete(struct rstore *r, const char *sid, uint64_t epoch, uint64_t owner, char *err,
                  size_t errlen)
{
    struct keys k;
    keys_of(r, sid, &k);
    char me[RSTORE_REPLICA_MAX + 24];
    lease_value(r, epoch, me, sizeof me);
    struct args a;
    eval_begin(&a, LUA_DELETE, 3);
    arg(&a, k.meta);
    arg(&a, k.lease);
    arg(&a, k.log);
    arg(&a, me);
    redisReply *y = run(r, &a, err, errlen);
    if (!y)
        return RC_EUNAVAILABLE;
    int rc = status_is(y, "OK") ? 0
                                : rc_fail(err, errlen, RC_EFENCED,
                                          "this replica's lease on the session was taken over");
    freeReplyObject(y);
    if (rc == 0) {
        char ok[96];
        owner_key(r, owner, ok, sizeof ok);
        simple_ok(r, NULL, 0, "SREM", ok, sid);
    }
    return rc;
}

int rstore_idem_get(struct rstore *r, const char *sid, const char *idem_hex, char **out,
                    size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    *len = 0;
    struct keys k;
    keys_of(r, sid, &k);
    char idem[160];
    snprintf(idem, sizeof idem, "%s:idem:%s", k.base, idem_hex);
    redisReply *y = simple(r, err, errlen, "GET", idem, NULL, NULL);
    if (!y)
        return RC_EUNAVAILABLE;
    int rc = RC_ENOENT;
    if (y->type == REDIS_REPLY_STRING) {
        *out = rc_malloc(y->len + 1);
        if (!*out)
            rc = rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        else {
            memcpy(*out, y->str, y->len);
            (*out)[y->len] = 0;
            *len = y->len;
            rc = 0;
        }
    }
    freeReplyObject(y);
    return rc;
}

int rstore_ask_handoff(struct rstore *r, const char *holder, const char *sid, char *err,
                       size_t errlen)
{
    char ch[64], msg[RSTORE_REPLICA_MAX + 40];
    snprintf(ch, sizeof ch, "recurd:%s:handoff", r->fp);
    snprintf(msg, sizeof msg, "%s %s", holder, sid);
    return simple_ok(r, err, errlen, "PUBLISH", ch, msg);
}

int rstore_list(struct rstore *r, uint64_t owner, struct rstore_entry **out, size_t *n,
                char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    char ok[96];
    owner_key(r, owner, ok, sizeof ok);
    redisReply *y = simple(r, err, errlen, "SMEMBERS", ok, NULL, NULL);
    if (!y)
        return RC_EUNAVAILABLE;
    if (y->type != REDIS_REPLY_ARRAY || y->elements == 0) {
        freeReplyObject(y);
        return 0;
    }
    struct rstore_entry *v = rc_calloc(y->elements, sizeof *v);
    redisContext *c = v ? conn(r, err, errlen) : NULL;
    if (!c) {
        rc_free(v);
        freeReplyObject(y);
        return v ? RC_EUNAVAILABLE : rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    size_t m = 0;
    for (size_t i = 0; i < y->elements; i++) {
        const char *id = y->element[i]->str;
        if (!id || strlen(id) != 32)
            continue;
        struct keys k;
        keys_of(r, id, &k);
        redisAppendCommand(c, "HMGET %s pos created", k.meta);
        redisAppendCommand(c, "GET %s", k.lease);
        memcpy(v[m++].id, id, 33);
    }
    int rc = 0;
    size_t kept = 0, n_gone = 0;
    char gone[64][33];
    for (size_t i = 0; i < m; i++) {
        redisReply *h = NULL, *l = NULL;
        if (redisGetReply(c, (void **)&h) != REDIS_OK || redisGetReply(c, (void **)&l) != REDIS_OK) {
            rc = rc_fail(err, errlen, RC_EUNAVAILABLE, "the store did not answer: %s", c->errstr);
            if (h)
                freeReplyObject(h);
            rstore_thread_close();
            break;
        }
        if (h->type == REDIS_REPLY_ARRAY && h->elements == 2 &&
            h->element[0]->type == REDIS_REPLY_STRING) {
            struct rstore_entry e = v[i];
            e.pos = strtoll(h->element[0]->str, NULL, 10);
            e.created = h->element[1]->str ? strtod(h->element[1]->str, NULL) : 0;
            if (l->type == REDIS_REPLY_STRING)
                snprintf(e.holder, sizeof e.holder, "%.*s", (int)strcspn(l->str, " "), l->str);
            v[kept++] = e;
        } else if (n_gone < sizeof gone / sizeof gone[0])
            memcpy(gone[n_gone++], v[i].id, 33); /* expired or deleted */
        freeReplyObject(h);
        freeReplyObject(l);
    }
    for (size_t i = 0; !rc && i < n_gone; i++) { /* the set forgets them */
        simple_ok(r, NULL, 0, "SREM", ok, gone[i]);
    }
    freeReplyObject(y);
    if (rc) {
        rc_free(v);
        return rc;
    }
    *out = v;
    *n = kept;
    return 0;
}

int rstore_subscribe(struct rstore *r, int (*stop)(void *), void (*on_msg)(void *, const char *),
                     void *ud, char *err, size_t errlen)
{
    redisContext *c = connect_to(r, err, errlen);
    if (!c)
        return RC_EUNAVAILABLE;
    char ch[64];
    snprintf(ch, sizeof ch, "recurd:%s:handoff", r->fp);
    redisReply *y = redisCommand(c, "SUBSCRIBE %s", ch);
    if (!y) {
        rc_fail(err, errlen, RC_EUNAVAILABLE, "SUBSCRIBE failed: %s", c->errstr);
        redisFree(c);
        return RC_EUNAVAILABLE;
    }
    freeReplyObject(y);
    int rc = 0;
    while (!stop(ud)) {
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int k = poll(&p, 1, 250);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0)
            continue;
        if (k < 0 || redisBufferRead(c) != REDIS_OK) {
            rc = rc_fail(err, errlen, RC_EUNAVAILABLE, "the handoff channel closed: %s",
                         c->errstr[0] ? c->errstr : "connection lost");
            break;
        }
        void *m;
        while (redisGetReplyFromReader(c, &m) == REDIS_OK && m) {
            redisReply *x = m;
            if (x->type == REDIS_REPLY_ARRAY && x->elements == 3 &&
                x->element[0]->type == REDIS_REPLY_STRING && !strcmp(x->element[0]->str, "message") &&
                x->element[2]->type == REDIS_REPLY_STRING)
                on_msg(ud, x->element[2]->str);
            freeReplyObject(x);
        }
        if (c->err) {
            rc = rc_fail(err, errlen, RC_EUNAVAILABLE, "the handoff channel failed: %s", c->errstr);
            break;
        }
    }
    redisFree(c);
    return rc;
}

void rstore_idem_hash(const char *key, size_t len, char out[33])
{
    XXH128_hash_t h = XXH3_128bits(key, len);
    snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, (uint64_t)h.high64, (uint64_t)h.low64);
}
