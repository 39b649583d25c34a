/*
 * codec.h — text <-> token ids for the server, whatever the model ships.
 *
 * A model directory with tokenizer.json gets its byte-level BPE tokenizer
 * (core/tokenizer.h); one without gets the byte-level fallback: id b is
 * byte b (the model's vocabulary must have at least 256 ids). Either way a token's text is a string of bytes (possibly
 * part of a UTF-8 character), and decoding a sequence is the concatenation
 * of its tokens' bytes; the server holds back incomplete characters itself
 * (core/utf8.h).
 *
 * The codec is immutable after load and shared by the threads. A
 * streaming encoder (one per streamed upload) takes bytes in arbitrary
 * pieces and returns ids, holding back only a bounded tail that could
 * still change (an incomplete pre-token); the ids of a whole stream equal
 * those of encoding it in one go.
 */
#ifndef RECUR_CODEC_H
#define RECUR_CODEC_H

#include <stddef.h>
#include <stdint.h>

struct codec;
struct codec_enc;

/* Load the codec for a model directory. vocab_size and n_rows are the
 * model's (ids a tokenizer may produce, embedding rows): a tokenizer with
 * ids beyond the rows is refused (RC_EMISMATCH). */
int codec_load(const char *model_dir, int vocab_size, int n_rows, struct codec **out,
               char *err, size_t errlen);
void codec_free(struct codec *c);

/* "bpe" or "byte", and one line describing the tokenizer. */
const char *codec_kind(const struct codec *c);
const char *codec_describe(const struct codec *c);
/* End-of-text id, or -1 when the codec has none. */
int32_t codec_eos(const struct codec *c);
/* The token the tokenizer puts before a text (Llama-style "<s> $A", or
 * tokenizer_config.json's add_bos_token), or -1: a stream's position 0 reads
 * it before its first text. */
int32_t codec_bos(const struct codec *c);
/* Bytes of one id (not NUL-terminated); id must be valid. */
const char *codec_piece(const struct codec *c, int32_t id, size_t *len);

/* Growable id vector the encoders append to (rc_* memory). */
struct idvec {
    int32_t *v;
    size_t n, cap;
};
int idvec_push(struct idvec *iv, int32_t id);
void idvec_free(struct idvec *iv);

/* Encode a whole text, appending to out. Returns 0, RC_ENOMEM. */
int codec_encode(const struct codec *c, const char *text, size_t len, struct idvec *out);

/* Streaming: feed pieces, then finish (final = 1) to flush the tail. */
int codec_enc_create(const struct codec *c, struct codec_enc **out);
void codec_enc_free(struct codec_enc *e);
int codec_enc_feed(struct codec_enc *e, const char *bytes, size_t n, int final,
                   struct idvec *out);
/* Bytes held back (an incomplete pre-token). */
size_t codec_enc_pending(const struct codec_enc *e);

#endif
