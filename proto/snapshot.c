#include "snapshot.h"

#include <inttypes.h>
#include <string.h>
#include <xxhash.h>

#include "alloc.h"
#include "errors.h"
#include "state.h"

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int snapshot_peek(const void *head, size_t n, struct snapshot_head *out)
{
    const uint8_t *p = head;
    if (n < SNAPSHOT_PEEK_BYTES || memcmp(p, SNAPSHOT_MAGIC, 8) != 0)
        return RC_EFORMAT;
    out->version = get_u32(p + 8);
    out->fingerprint = get_u64(p + 12);
    out->payload_len = get_u64(p + 20);
    out->position = state_serialized_pos(p + SNAPSHOT_HEADER_BYTES);
    return 0;
}

size_t snapshot_size(size_t payload_len)
{
    size_t n;
    if (__builtin_add_overflow(payload_len, (size_t)(SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES),
                               &n))
        return 0;
    return n;
}

int snapshot_check(const void *buf, size_t len, uint64_t expect_fp, struct snapshot_info *info,
                   char *err, size_t errlen)
{
    const uint8_t *p = buf;
    if (len < SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES)
        return rc_fail(err, errlen, RC_EFORMAT, "snapshot truncated: %zu bytes, a header alone is %u",
                       len, SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES);
    if (memcmp(p, SNAPSHOT_MAGIC, 8) != 0)
        return rc_fail(err, errlen, RC_EFORMAT, "not a recurd snapshot (bad magic)");
    uint32_t version = get_u32(p + 8);
    if (version != SNAPSHOT_VERSION)
        return rc_fail(err, errlen, RC_EUNSUPPORTED,
                       "snapshot format version %" PRIu32 " is not supported (this server reads %u)",
                       version, SNAPSHOT_VERSION);
    uint64_t fp = get_u64(p + 12);
    uint64_t plen = get_u64(p + 20);
    /* Compare in u64 so a huge declared length cannot wrap. */
    uint64_t have = (uint64_t)len - (SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES);
    if (plen != have)
        return rc_fail(err, errlen, RC_EFORMAT,
                       "snapshot length mismatch: header declares a %" PRIu64
                       "-byte payload, the data holds %" PRIu64 " (truncated or padded)",
                       plen, have);
    size_t body = len - SNAPSHOT_TRAILER_BYTES;
    uint64_t want = get_u64(p + body);
    uint64_t got = XXH3_64bits(p, body);
    if (want != got)
        return rc_fail(err, errlen, RC_ECHECKSUM,
                       "snapshot checksum mismatch (stored %016" PRIx64 ", computed %016" PRIx64
                       "): the data is damaged", want, got);
    if (fp != expect_fp)
        return rc_fail(err, errlen, RC_EMISMATCH,
                       "snapshot was made by another model (fingerprint %016" PRIx64
                       ", this model %016" PRIx64 ")", fp, expect_fp);
    if (info) {
        info->version = version;
        info->fingerprint = fp;
        info->payload_len = plen;
        info->payload = p + SNAPSHOT_HEADER_BYTES;
    }
    return 0;
}

void snapshot_seal(void *buf, uint64_t fingerprint, size_t payload_len)
{
    uint8_t *p = buf;
    memcpy(p, SNAPSHOT_MAGIC, 8);
    put_u32(p + 8, SNAPSHOT_VERSION);
    put_u64(p + 12, fingerprint);
    put_u64(p + 20, payload_len);
    size_t body = SNAPSHOT_HEADER_BYTES + payload_len;
    put_u64(p + body, XXH3_64bits(p, body));
}

int snapshot_encode(const struct mstate *s, uint64_t fingerprint, uint8_t **out, size_t *len,
                    char *err, size_t errlen)
{
    size_t plen = state_serialized_bytes(s->model);
    size_t total = snapshot_size(plen);
    if (!total)
        return rc_fail(err, errlen, RC_ERANGE, "snapshot size overflows");
    uint8_t *buf = rc_malloc(total);
    if (!buf)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory for a %zu-byte snapshot", total);
    int rc = state_serialize(s, buf + SNAPSHOT_HEADER_BYTES, plen);
    if (rc != 0) {
        rc_free(buf);
        return rc_fail(err, errlen, rc, "serialising the state failed: %s", rc_strerror(rc));
    }
    snapshot_seal(buf, fingerprint, plen);
    *out = buf;
    *len = total;
    return 0;
}

int snapshot_decode(struct mstate *s, uint64_t fingerprint, const void *buf, size_t len,
                    char *err, size_t errlen)
{
    struct snapshot_info info;
    int rc = snapshot_check(buf, len, fingerprint, &info, err, errlen);
    if (rc != 0)
        return rc;
    return state_deserialize(s, info.payload, (size_t)info.payload_len, err, errlen);
}
