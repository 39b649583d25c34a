/*
 * snapshot.h — the binary snapshot of one session (spec: proto/SNAPSHOT.md).
 *
 *   offset  size  field
 *   0       8     magic "RECURSNP"
 *   8       4     u32 format version (1)
 *   12      8     u64 model fingerprint (model_fingerprint())
 *   20      8     u64 payload length P
 *   28      P     payload: state_serialize() layout (core/state.h)
 *   28+P    8     u64 XXH3-64 of bytes [0, 28+P)
 * All integers little-endian. A snapshot is exactly 36 + P bytes.
 *
 * Checking order, so a damaged file is never mistaken for a foreign one:
 * size and magic, version, declared length against the actual length,
 * checksum, and only then the fingerprint; then (snapshot_decode, through
 * state_deserialize) the payload's layout and its values: position
 * <= STATE_MAX_POS (2^53), every state float finite with |x| <= 1e4
 * (last, conv: STATE_MAX_ACT) or 1e10 (ssm: STATE_MAX_SSM), so a forged file with a recomputed checksum cannot
 * load a state whose next step overflows. Every check runs before the
 * target state is touched; decoding into a state either fully succeeds or
 * leaves it unchanged.
 */
#ifndef RECUR_SNAPSHOT_H
#define RECUR_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "state.h"

struct mstate;

#define SNAPSHOT_MAGIC "RECURSNP"
#define SNAPSHOT_VERSION 1u
#define SNAPSHOT_HEADER_BYTES 28u
#define SNAPSHOT_TRAILER_BYTES 8u

struct snapshot_info {
    uint32_t version;
    uint64_t fingerprint;
    uint64_t payload_len;
    const uint8_t *payload; /* into the checked buffer */
};

/* What the first bytes of a snapshot file say, for indexing files without
 * reading them whole (spilled states at start-up): the header's fields
 * and the stream position from the payload (core/state.h's layout).
 * Nothing is checksummed: snapshot_check on the whole file still decides
 * whether it loads. */
#define SNAPSHOT_PEEK_BYTES (SNAPSHOT_HEADER_BYTES + STATE_PREFIX_BYTES)
struct snapshot_head {
    uint32_t version;
    uint64_t fingerprint;
    uint64_t payload_len;
    int64_t position;
};
/* head holds a file's first n bytes. 0, or RC_EFORMAT when n <
 * SNAPSHOT_PEEK_BYTES or the magic is not a snapshot's. */
int snapshot_peek(const void *head, size_t n, struct snapshot_head *out);

/* Bytes of a snapshot whose payload is payload_len; 0 on overflow. */
size_t snapshot_size(size_t payload_len);

/* Check the envelope of buf[0..len). Returns 0 with *info filled, or
 *   RC_EFORMAT       too short, bad magic, declared length != actual
 *   RC_EUNSUPPORTED  another format version
 *   RC_ECHECKSUM     checksum mismatch (damaged bytes)
 *   RC_EMISMATCH     intact, but made by a model whose fingerprint is not
 *                    expect_fp
 * with err naming the reason. Reads nothing outside buf[0..len). */
int snapshot_check(const void *buf, size_t len, uint64_t expect_fp, struct snapshot_info *info,
                   char *err, size_t errlen);

/* Write header and checksum around a payload already written at
 * buf + SNAPSHOT_HEADER_BYTES; buf holds snapshot_size(payload_len) bytes. */
void snapshot_seal(void *buf, uint64_t fingerprint, size_t payload_len);

/* Serialise s into a new rc_malloc'ed snapshot (*out, *len). fingerprint
 * is the model's (model_fingerprint(s->model), cached by the caller). */
int snapshot_encode(const struct mstate *s, uint64_t fingerprint, uint8_t **out, size_t *len,
                    char *err, size_t errlen);

/* Check buf and read it into s (which must belong to the model with
 * fingerprint fp). Returns 0 or snapshot_check's codes, or the codes of
 * state_deserialize (RC_EFORMAT ...). On error s is unchanged. */
int snapshot_decode(struct mstate *s, uint64_t fingerprint, const void *buf, size_t len,
                    char *err, size_t errlen);

#endif
