/*
 * tokenizer.h — Hugging Face tokenizer.json BPE (byte-level as GPT-2 / GPT-NeoX, or a
 * text vocab with byte fallback as Llama / Mistral), id-for-id identical to the
 * reference (HF `tokenizers`), with streaming encoders and decoders.
 *
 * Overview
 *   tokenizer_t is loaded once (tokenizer_load_file / _json / _dir, or the byte-level
 *   fallback tokenizer_create_bytes) and is immutable afterwards: share it between
 *   threads freely. Everything that changes while encoding lives in a tok_encoder_t
 *   (one per thread or per stream; it holds the pre-token cache); decoding state lives
 *   in a tok_decoder_t. tokenizer_encode() / tokenizer_decode() are the one-shot forms.
 *
 * What is supported (anything else fails to load with RC_EUNSUPPORTED naming it):
 *   model          BPE: vocab; merges as "a b" strings or ["a","b"] pairs; unk_token,
 *                  fuse_unk, byte_fallback, ignore_merges; dropout null or 0;
 *                  continuing_subword_prefix / end_of_word_suffix null or "".
 *                  The vocab is byte-level (GPT-2 characters; ByteLevel pre-tokenizer
 *                  and decoder) or text (Llama / Mistral: characters, with <0xXX>
 *                  byte-fallback tokens and a decoder chain).
 *   added_tokens   special or not, normalized or not, lstrip, rstrip, single_word;
 *                  matched before pre-tokenisation, leftmost-longest.
 *   normalizer     null, NFC, NFKC, NFD, NFKD (libutf8proc), Prepend, Replace with a
 *                  String pattern, Sequence of those.
 *   pre_tokenizer  ByteLevel (add_prefix_space, use_regex), Split (String or Regex
 *                  pattern, all five behaviours, invert), Sequence of Splits followed
 *                  by exactly one ByteLevel. Regexes run on PCRE2 (UTF+UCP, JIT).
 *                  Text vocab: none, or Metaspace (prepend_scheme first / always /
 *                  never, split) first, then Splits.
 *   post_processor null, ByteLevel, TemplateProcessing with the single template "$A" or
 *                  "<special> $A" (see tokenizer_bos_id), Sequence of those.
 *   decoder        ByteLevel; text vocab: Replace (String or Regex), ByteFallback,
 *                  Fuse, Strip, Metaspace, Sequence of those, or none.
 *   truncation / padding are ignored: they shape batches, recurd never applies them.
 *
 * Invalid UTF-8 in text to encode: every maximal ill-formed subpart becomes U+FFFD
 * before normalisation, exactly as Python's bytes.decode("utf-8", errors="replace")
 * (see utf8.h). Decoded text is always valid UTF-8 (same replacement rule).
 *
 * Errors: functions return 0 or a negative rc_status (errors.h) and write detail into
 * err[errlen] (may be NULL). A function that fails leaves no output for the caller to
 * free and, for encoders/decoders, no change to their state unless stated.
 */
#ifndef RECUR_TOKENIZER_H
#define RECUR_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer tokenizer_t;
typedef struct tok_encoder tok_encoder_t;
typedef struct tok_decoder tok_decoder_t;

/* ---- loading ---------------------------------------------------------------- */

/* Largest tokenizer.json accepted, and caps on what it may contain (a file over a cap
 * is refused with RC_ERANGE): ids (max id + 1), merges, one token's bytes. */
#define TOKENIZER_MAX_FILE_BYTES ((size_t)512 << 20)
#define TOKENIZER_MAX_IDS (1 << 22)
#define TOKENIZER_MAX_MERGES (1 << 23)
#define TOKENIZER_MAX_TOKEN_BYTES 4096

/* Load a tokenizer.json. *out is set on success; free with tokenizer_free(). */
int tokenizer_load_file(const char *path, tokenizer_t **out, char *err, size_t errlen);
/* The same from a JSON text in memory (need not be NUL-terminated). */
int tokenizer_load_json(const char *json, size_t len, tokenizer_t **out, char *err,
                        size_t errlen);
/* The byte-level fallback: ids 0..255 are the bytes 0..255, nothing else. Encoding
 * gives the input bytes unchanged (no UTF-8 repair: every byte is representable);
 * decoding repairs invalid UTF-8 like every decoder here. No end-of-text id. */
int tokenizer_create_bytes(tokenizer_t **out, char *err, size_t errlen);
/* A model directory: DIR/tokenizer.json if it exists, else the byte-level fallback
 * (*fallback set to 1; 0 when the file was loaded; fallback may be NULL). A file that
 * exists but does not load is an error, never a silent fallback. If
 * DIR/tokenizer_config.json has "add_bos_token" (transformers' setting, which its
 * Llama-style tokenizers apply over tokenizer.json's template), it decides
 * tokenizer_bos_id(): true -> the id of its "bos_token", false -> -1. */
int tokenizer_load_dir(const char *dir, tokenizer_t **out, int *fallback, char *err,
                       size_t errlen);
void tokenizer_free(tokenizer_t *tok); /* NULL is a no-op */

/* ---- facts -------------------------------------------------------------------- */

/* Max id + 1 over the model vocab and the added tokens (ids without a token inside
 * this range decode to nothing, as in the reference). */
int32_t tokenizer_vocab_size(const tokenizer_t *tok);
/* Id of "<|endoftext|>" (added token or vocab entry), else of the added token "</s>"
 * (Llama / Mistral), or -1. */
int32_t tokenizer_eos_id(const tokenizer_t *tok);
/* The id the reference's post-processor puts in front of every encoded text
 * (TemplateProcessing with the single template "<s> $A", e.g. Llama's <s>; or
 * tokenizer_config.json's add_bos_token, see tokenizer_load_dir), or -1 if it adds
 * nothing. tokenizer_encode() and the streaming encoder never add it (they give
 * encode(text, add_special_tokens=False)); a caller that wants the reference's default
 * encode(text) puts this id at position 0 of a stream, once. */
int32_t tokenizer_bos_id(const tokenizer_t *tok);
/* Id of a token by its text: an added token's content, or the vocab entry whose
 * bytes are s[0..n) (byte-level vocab strings are matched by the bytes they stand
 * for). -1 if none. */
int32_t tokenizer_find_token(const tokenizer_t *tok, const char *s, size_t n);
/* The bytes id decodes to (may be part of a UTF-8 character, or empty); for a text
 * vocab what the token stands for inside a text ("▁the" -> " the", "<0xE2>" -> the
 * byte 0xE2; the decoder's Fuse/Strip and Metaspace's first-token rule left out).
 * *bytes stays valid as long as tok. RC_EINVAL if id is outside [0, vocab_size). */
int tokenizer_token_bytes(const tokenizer_t *tok, int32_t id, const char **bytes, size_t *len);
/* 1 if id is a special added token (skipped by TOK_DECODE_SKIP_SPECIAL), else 0. */
int tokenizer_is_special(const tokenizer_t *tok, int32_t id);
/* One line describing the pipeline, e.g. "BPE 50277 ids, 50009 merges, NFC,
 * ByteLevel, 25 added tokens". Valid as long as tok. */
const char *tokenizer_describe(const tokenizer_t *tok);

/* ---- one-shot encode / decode ---------------------------------------------------- */

/* Encoder flag: special added tokens are not matched; their text is tokenised like
 * any other text (the reference's encode_special_tokens = True). */
#define TOK_ENCODE_NO_SPECIAL 1u
/* Decoder flag: special added tokens decode to nothing (the reference's
 * skip_special_tokens = True). */
#define TOK_DECODE_SKIP_SPECIAL 1u

/* Encode text[0..len) (bytes; invalid UTF-8 repaired as documented above) in one go:
 * exactly the reference's encode(text).ids. *ids is rc_malloc'ed (rc_free it; may be
 * NULL when *n_ids is 0). */
int tokenizer_encode(const tokenizer_t *tok, const char *text, size_t len, unsigned flags,
                     int32_t **ids, size_t *n_ids, char *err, size_t errlen);

/* Decode ids into valid UTF-8: the reference's decode(ids). *text is rc_malloc'ed and
 * NUL-terminated (rc_free it); *len excludes the NUL. RC_EINVAL naming the index of
 * the first id outside [0, vocab_size). */
int tokenizer_decode(const tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags,
                     char **text, size_t *len, char *err, size_t errlen);

/* ---- streaming encoder ------------------------------------------------------------ */

/* Default cap on the text an encoder holds back (see below). */
#define TOK_ENCODER_DEFAULT_MAX_PENDING ((size_t)64 << 10)

struct tok_encoder_opts {
    unsigned flags;      /* TOK_ENCODE_* */
    size_t max_pending;  /* 0: default; SIZE_MAX: no cap (exact for every input) */
};

/* Feed arbitrary byte chunks (split anywhere: inside a UTF-8 character, an added
 * token, a word); the encoder emits the ids of the text that can no longer change and
 * holds back the rest; tok_encoder_finish() flushes. The ids equal those of
 * tokenizer_encode() on the whole text:
 *   - exactly, whenever no single pre-token (e.g. one run of letters, digits,
 *     spaces or punctuation), combining-mark run or whitespace run around an
 *     lstrip/rstrip added token is longer than max_pending bytes;
 *   - beyond that the held text would grow without bound, so a pre-token longer than
 *     max_pending is encoded in windows of max_pending bytes, committing the BPE tokens
 *     of the first half of each window. This is exact whenever the BPE merges of the
 *     word have less reach than half a window (runs of one repeated character or
 *     pattern, random letters, CJK runs: tested against the whole-text result on
 *     runs of 10 MB), but it is not a proof for every conceivable merge table.
 *   - text vocab (Llama family): with the legacy form or Metaspace without split a
 *     whole segment is ONE word; it is cut, exactly, at barriers: character boundaries
 *     that no merge of the vocab can join across (derived from the merges at load;
 *     in real text, before most "▁" and around <0xXX> bytes such as newlines). Only
 *     a run with no barrier longer than max_pending (e.g. 64 kB of spaces when "▁▁"
 *     merges, or of characters that are <unk> and fuse) falls back to the windows.
 * Held-back text stays below about 2 * max_pending + 4 kB (tok_encoder_pending_bytes).
 * opts may be NULL (defaults). */
int tok_encoder_create(const tokenizer_t *tok, const struct tok_encoder_opts *opts,
                       tok_encoder_t **out, char *err, size_t errlen);
/* Append bytes. Ids that became final are appended to the encoder's id list. On
 * error the encoder is unusable until tok_encoder_reset(). */
int tok_encoder_feed(tok_encoder_t *enc, const void *bytes, size_t len, char *err,
                     size_t errlen);
/* End of text: flush everything (a trailing partial UTF-8 character becomes U+FFFD).
 * Afterwards feed() starts nothing new until tok_encoder_reset(). */
int tok_encoder_finish(tok_encoder_t *enc, char *err, size_t errlen);
/* The ids emitted so far and not yet taken; valid until the next call on enc. */
const int32_t *tok_encoder_ids(const tok_encoder_t *enc, size_t *n);
/* Forget the first n ids of that list (the caller consumed them). */
void tok_encoder_take(tok_encoder_t *enc, size_t n);
/* Bytes held back right now (input not yet turned into ids). */
size_t tok_encoder_pending_bytes(const tok_encoder_t *enc);
/* Start a new text; keeps the cache and buffers. */
void tok_encoder_reset(tok_encoder_t *enc);
void tok_encoder_free(tok_encoder_t *enc); /* NULL is a no-op */

/* ---- streaming decoder ------------------------------------------------------------ */

/* Feed ids one at a time; each call returns only complete, valid UTF-8 (a token that
 * ends inside a character is held until the character completes). Ill-formed bytes
 * become U+FFFD per maximal subpart, so the concatenation of all outputs and the
 * flush equals tokenizer_decode() of all the ids.
 * Text vocab (Llama family): each feed gives exactly what the reference's
 * DecodeStream.step gives (None = ""): the new text of a window of ids once it is
 * longer than before and does not end in U+FFFD. The flush gives what it would hold
 * back forever; where it raises InvalidPrefix (a byte token making an earlier byte run
 * invalid) we give the text past the old length; a window past 256 held ids is given
 * out anyway. The concatenation then equals tokenizer_decode() except after such an
 * InvalidPrefix. */
int tok_decoder_create(const tokenizer_t *tok, unsigned flags, tok_decoder_t **out,
                       char *err, size_t errlen);
/* text, len: the new text (possibly empty), valid until the next call on dec.
 * RC_EINVAL for an id outside [0, vocab_size) (state unchanged). */
int tok_decoder_feed(tok_decoder_t *dec, int32_t id, const char **text, size_t *len,
                     char *err, size_t errlen);
/* End of stream: a dangling partial character (1-3 bytes) becomes one U+FFFD, as
 * errors="replace" does for a sequence truncated by the end of input. The decoder is
 * then empty and can be reused. */
int tok_decoder_flush(tok_decoder_t *dec, const char **text, size_t *len);
void tok_decoder_free(tok_decoder_t *dec); /* NULL is a no-op */

#endif
