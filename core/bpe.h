/*
 * bpe.h — byte-level BPE: the merge table, the merge loop, and a pre-token cache.
 *
 * Internal to the tokenizer (core/tokenizer.c builds it while loading a
 * tokenizer.json). The merge loop is the one Hugging Face `tokenizers` runs
 * (models/bpe/word.rs, merge_all): a priority queue of candidate merges ordered by
 * (rank, position), the lowest first; a popped candidate is applied only if the pair
 * at its position still produces the same new id. Same queue order, same staleness
 * test, so the same ids, also for odd merge tables (two pairs making one token,
 * duplicate pairs: the later rank wins, as in the reference's hash map). Each merge is
 * O(log n): a 200 kB word costs milliseconds, not minutes.
 *
 * A word is a pre-token's bytes. Its initial symbols are the ids of its bytes'
 * byte-level characters (struct bpe.byte_syms); a byte without one goes to the unknown
 * token (fused or not) or is dropped when there is none, as the reference does.
 *
 * The model (struct bpe) is immutable once built and may be shared by threads; the
 * scratch (struct bpe_work) and the cache (struct bpe_cache) belong to one thread.
 */
#ifndef RECUR_BPE_H
#define RECUR_BPE_H

#include <stddef.h>
#include <stdint.h>

/* A growable id list (rc_malloc'ed). */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};

int tok_ids_reserve(struct tok_ids *ids, size_t extra); /* 0 or RC_ENOMEM */
static inline int tok_ids_push(struct tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        int rc = tok_ids_reserve(ids, 1);
        if (rc)
            return rc;
    }
    ids->v[ids->n++] = id;
    return 0;
}
void tok_ids_free(struct tok_ids *ids);

enum bpe_byte_kind { BPE_BYTE_NONE = 0, BPE_BYTE_VOCAB, BPE_BYTE_FALLBACK };

struct bpe {
    /* (a, b) -> (rank, new id); open addressing, linear probing */
    uint64_t *keys; /* (a << 32 | b), UINT64_MAX = empty; [mask + 1] */
    uint64_t *vals; /* (rank << 32 | new_id) */
    size_t mask;
    size_t count;
    /* Two different pairs merge into the same token. Then the reference's queue can
     * apply a stale entry (its staleness test compares new ids only), and only the
     * queue reproduces that; otherwise short words take an equivalent faster path. */
    int ambiguous;
    /* Initial symbols of each byte: byte_sym_ids[byte_sym_off[b] .. byte_sym_off[b+1]).
     * One id normally; the <0xXX> ids of the byte's character under byte_fallback;
     * none when the byte has no symbol (then unk or dropped). */
    uint16_t byte_sym_off[257];
    int32_t byte_sym_ids[256 * 4];
    uint8_t byte_kind[256]; /* enum bpe_byte_kind */
    /* char_level: the vocab holds text, not GPT-2 byte characters (no ByteLevel
     * pre-tokenizer): a word's initial symbols are its UTF-8 characters' vocab ids;
     * a character without one becomes the <0xXX> ids of its bytes (byte_fallback,
     * all of them present: fb_id) or the unknown token. ASCII uses the byte tables
     * above; longer characters are looked up in the word table (all vocab entries). */
    int char_level;
    int byte_fallback;
    int no_unk;            /* char_level with all 256 <0xXX>: no unknown token ever */
    int32_t fb_id[256];    /* id of "<0xXX>", -1 if absent */
    int32_t unk_id;        /* -1: no unknown token configured */
    int unk_missing;       /* an unk_token was named but is not in the vocab */
    int fuse_unk;
    /* ignore_merges: a whole pre-token that is a vocab entry maps to it directly;
     * lookup by the pre-token's bytes (bytes -> id, see bpe_add_word). */
    int ignore_merges;
    uint64_t *word_keys;   /* hash of bytes, 0 = empty */
    int32_t *word_ids;
    uint32_t *word_off, *word_len; /* into word_pool */
    uint8_t *word_pool;
    size_t word_mask, word_count, word_pool_len, word_pool_cap;
};

/* Allocate the (empty) merge table for n_merges; other fields are left alone (start
 * from a zeroed struct bpe with unk_id = -1). 0, RC_ENOMEM or RC_ERANGE. bpe_free()
 * releases everything. */
int bpe_init(struct bpe *b, size_t n_merges);
void bpe_free(struct bpe *b);
/* Insert or overwrite (later ranks win, like the reference). Capacity was reserved by
 * bpe_init; returns RC_ERANGE if more merges than reserved are added. */
int bpe_add_merge(struct bpe *b, int32_t a, int32_t c, uint32_t rank, int32_t new_id);
/* Set b->ambiguous after the last merge was added (n_ids: max id + 1). 0 or RC_ENOMEM. */
int bpe_check_ambiguous(struct bpe *b, size_t n_ids);
/* 1 and *rank, *new_id set if (a, c) merges. */
static inline int bpe_lookup(const struct bpe *b, int32_t a, int32_t c, uint32_t *rank,
                             int32_t *new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)c;
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h ^ (h >> 32)) & b->mask;
    for (;;) {
        uint64_t k = b->keys[i];
        if (k == key) {
            *rank = (uint32_t)(b->vals[i] >> 32);
            *new_id = (int32_t)(uint32_t)b->vals[i];
            return 1;
        }
        if (k == UINT64_MAX)
            return 0;
        i = (i + 1) & b->mask;
    }
}
/* Word table for ignore_merges: reserve for n words, then add (bytes -> id). */
int bpe_words_init(struct bpe *b, size_t n);
int bpe_add_word(struct bpe *b, const uint8_t *s, size_t n, int32_t id);
int32_t bpe_find_word(const struct bpe *b, const uint8_t *s, size_t n); /* -1 if absent */

/* Per-thread scratch for the merge loop. Zero-initialise; bpe_work_free() at the end. */
struct bpe_work {
    struct bpe_sym *sym;
    size_t sym_cap;
    struct bpe_cand *heap;
    size_t heap_cap;
};
void bpe_work_free(struct bpe_work *w);

/* Append the ids of word w[0..n) (n >= 1) to out. 0, RC_ENOMEM, or RC_EFORMAT when a
 * byte needs the unknown token and the configured one is not in the vocab. */
int bpe_encode_word(const struct bpe *b, struct bpe_work *w, const uint8_t *word, size_t n,
                    struct tok_ids *out);

/* One part of a word cut at a barrier (tokenizer.c): the same, except that an unknown
 * token pending at the start of the part (*unk_carry) or at its end carries over
 * instead of being written out, unless last. unk_carry may be NULL (none). */
int bpe_encode_part(const struct bpe *b, struct bpe_work *w, const uint8_t *word, size_t n,
                    int *unk_carry, int last, struct tok_ids *out);

/* Pre-token cache: words up to BPE_CACHE_MAX_WORD bytes -> ids. Bounded (about 1 MiB);
 * when full it starts over. Zero-initialise; bpe_cache_free() at the end. Results
 * never depend on its state. */
#define BPE_CACHE_MAX_WORD 96
struct bpe_cache {
    struct bpe_cache_ent *ent;
    size_t mask, count;
    uint8_t *keys;
    size_t keys_len, keys_cap;
    int32_t *ids;
    size_t ids_len, ids_cap;
    uint64_t hits, misses;
};
void bpe_cache_free(struct bpe_cache *c);

/* bpe_encode_word through the cache (and, when whole: the word is a whole pre-token,
 * ignore_merges). Same returns. */
int bpe_encode_cached(const struct bpe *b, struct bpe_work *w, struct bpe_cache *c,
                      const uint8_t *word, size_t n, int whole, struct tok_ids *out);

#endif
