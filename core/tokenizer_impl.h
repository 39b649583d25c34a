/*
 * tokenizer_impl.h — the tokenizer's internals, shared by tokenizer.c (encode,
 * decode, streaming) and tokenizer_load.c (tokenizer.json parsing). Not a public
 * header: everything outside core/tokenizer*.c uses tokenizer.h.
 */
#ifndef RECUR_TOKENIZER_IMPL_H
#define RECUR_TOKENIZER_IMPL_H

#include "bpe.h"
#include "pretok.h"
#include "tokenizer.h"

enum tok_kind { TOK_KIND_BPE = 1, TOK_KIND_BYTES };

enum { TOKF_PRESENT = 1, TOKF_ADDED = 2, TOKF_SPECIAL = 4 };

enum { ADDF_SPECIAL = 1, ADDF_LSTRIP = 2, ADDF_RSTRIP = 4, ADDF_SINGLE_WORD = 8 };

/* One added token as the matcher sees it. */
struct tok_added {
    int32_t id;
    uint8_t flags; /* ADDF_* */
};

/* One added-token matching stage (the reference has two: on the raw text for tokens
 * with normalized = false, on normalised text for the others). */
struct tok_matcher {
    struct trie trie;            /* pattern -> index into tok->added */
    int any_lstrip, any_rstrip, any_single_word;
};

/* Decoder steps for the text-vocab (char-level) family; the reference's decoders of
 * the same names, applied in order to the list of token strings. */
enum dec_kind { DEC_REPLACE = 1, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
#define DEC_MAX_STEPS 8
struct dec_step {
    int kind;
    uint8_t *pat, *rep;       /* DEC_REPLACE: literal pattern (or NULL: regex re_step) */
    size_t pat_len, rep_len;
    int re_step;              /* DEC_REPLACE with a Regex: index into dec_re.step, else -1 */
    uint8_t ch[4];            /* DEC_STRIP: the character; DEC_METASPACE: the replacement */
    int ch_len;
    size_t start, stop;       /* DEC_STRIP: characters to strip at each end */
    int prepend;              /* DEC_METASPACE: MS_* */
};

struct tokenizer {
    int kind;                 /* enum tok_kind */
    /* 1: GPT-2 byte-level vocab (ByteLevel pre-tokenizer and decoder); 0: the vocab
     * holds text (Llama/Mistral style, with byte fallback and a decoder chain). */
    int bytelevel;
    int32_t n_ids;            /* max id + 1 */
    /* What each id decodes to: piece_pool[piece_off[id] .. piece_off[id + 1]). */
    uint32_t *piece_off;      /* [n_ids + 1] */
    uint8_t *piece_pool;
    uint8_t *id_flags;        /* [n_ids], TOKF_* */
    size_t max_piece;         /* longest piece, bytes */
    /* Text vocab only: the token strings as the file has them (what the decoder chain
     * sees): raw_pool[raw_off[id] .. raw_off[id + 1]). The piece pool then holds what
     * a token stands for inside a text (see tokenizer_token_bytes). */
    uint32_t *raw_off;
    uint8_t *raw_pool;
    struct dec_step dec[DEC_MAX_STEPS];
    int n_dec;
    int dec_none;             /* no decoder: tokens joined with " " */
    struct pretok dec_re;     /* regexes of Replace decoders */
    /* Text vocab, streaming: (left key, right key) pairs a merge could join across a
     * character boundary (see tokenizer.c, barriers). Open addressing, 0 = empty. */
    uint64_t *bar_keys;
    size_t bar_mask, bar_count;
    int32_t eos_id;
    int32_t bos_id;           /* the post-processor's prefix token, -1 if none */
    /* Added tokens, and the two matching stages. */
    struct tok_added *added;
    size_t n_added;
    struct tok_matcher raw_match;  /* normalized = false tokens, on the input text */
    struct tok_matcher norm_match; /* normalized = true tokens, on normalised text */
    struct normalizer norm;
    struct pretok pre;             /* steps; pre.n >= 1 for BPE */
    int first_split;          /* step 0 splits (Split, or ByteLevel with its regex) */
    struct bpe bpe;
    size_t n_merges;
    char desc[200];
};

/* Barrier keys: a character's code point, or BAR_SPECIAL + id for a byte-fallback or
 * unknown-token symbol; a pair is (left << 32 | right) with the top bit set. */
#define BAR_SPECIAL 0x200000u
static inline uint64_t bar_pair(uint32_t l, uint32_t r)
{
    return ((uint64_t)l << 32 | r) | (1ULL << 63);
}

/* Decode token strings with the decoder chain (text vocab). standalone: what one token
 * stands for inside a text (for the piece pool): Fuse and Strip are skipped, Metaspace
 * treats it as not the first token, a byte-fallback token gives its byte. Otherwise
 * the reference's decode of ids[0..n) (present ids only; specials skipped with
 * TOK_DECODE_SKIP_SPECIAL). Appends to out. 0, RC_ENOMEM, or an rc from the regex. */
struct dec_work;
int tok_dec_piece(const tokenizer_t *tok, struct dec_work **w, const uint8_t *s, size_t n,
                  struct tok_bytes *out);
void tok_dec_work_free(struct dec_work *w);

/* Allocate an empty tokenizer of the given kind (rc_calloc). */
tokenizer_t *tokenizer_alloc(int kind);

#endif
