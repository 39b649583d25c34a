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

struct tokenizer {
    int kind;                 /* enum tok_kind */
    int32_t n_ids;            /* max id + 1 */
    /* What each id decodes to: piece_pool[piece_off[id] .. piece_off[id + 1]). */
    uint32_t *piece_off;      /* [n_ids + 1] */
    uint8_t *piece_pool;
    uint8_t *id_flags;        /* [n_ids], TOKF_* */
    size_t max_piece;         /* longest piece, bytes */
    int32_t eos_id;
    /* Added tokens, and the two matching stages. */
    struct tok_added *added;
    size_t n_added;
    struct tok_matcher raw_match;  /* normalized = false tokens, on the input text */
    struct tok_matcher norm_match; /* normalized = true tokens, on normalised text */
    struct norm norm;
    struct pretok pre;             /* steps; pre.n >= 1 for BPE */
    int first_split;          /* step 0 splits (Split, or ByteLevel with its regex) */
    struct bpe bpe;
    size_t n_merges;
    char desc[200];
};

/* Allocate an empty tokenizer of the given kind (rc_calloc). */
tokenizer_t *tokenizer_alloc(int kind);

#endif
