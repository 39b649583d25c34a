#include "bpe.h"

#include <string.h>
#include <xxhash.h>

#include "alloc.h"
#include "errors.h"

int tok_ids_reserve(struct tok_ids *ids, size_t extra)
{
    size_t need;
    if (__builtin_add_overflow(ids->n, extra, &need))
        return RC_ENOMEM;
    if (need <= ids->cap)
        return 0;
    size_t cap = ids->cap ? ids->cap : 64;
    while (cap < need) {
        if (__builtin_mul_overflow(cap, 2, &cap))
            return RC_ENOMEM;
    }
    size_t bytes;
    if (__builtin_mul_overflow(cap, sizeof *ids->v, &bytes))
        return RC_ENOMEM;
    int32_t *v = rc_realloc(ids->v, bytes);
    if (!v)
        return RC_ENOMEM;
    ids->v = v;
    ids->cap = cap;
    return 0;
}

void tok_ids_free(struct tok_ids *ids)
{
    rc_free(ids->v);
    ids->v = NULL;
    ids->n = ids->cap = 0;
}

/* ---- merge table ---------------------------------------------------------- */

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

int bpe_init(struct bpe *b, size_t n_merges)
{
    if (n_merges > ((size_t)1 << 28))
        return RC_ERANGE;
    size_t cap = pow2_at_least(n_merges * 2 + 1);
    b->keys = rc_malloc(cap * sizeof *b->keys);
    b->vals = rc_malloc(cap * sizeof *b->vals);
    if (!b->keys || !b->vals) {
        rc_free(b->keys);
        rc_free(b->vals);
        b->keys = NULL;
        b->vals = NULL;
        return RC_ENOMEM;
    }
    memset(b->keys, 0xFF, cap * sizeof *b->keys);
    b->mask = cap - 1;
    b->count = 0;
    return 0;
}

void bpe_free(struct bpe *b)
{
    rc_free(b->keys);
    rc_free(b->vals);
    rc_free(b->word_keys);
    rc_free(b->word_ids);
    rc_free(b->word_off);
    rc_free(b->word_len);
    rc_free(b->word_pool);
    memset(b, 0, sizeof *b);
    b->unk_id = -1;
}

int bpe_add_merge(struct bpe *b, int32_t a, int32_t c, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)c;
    uint64_t val = ((uint64_t)rank << 32) | (uint32_t)new_id;
    uint64_t h = key * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h ^ (h >> 32)) & b->mask;
    while (b->keys[i] != UINT64_MAX && b->keys[i] != key)
        i = (i + 1) & b->mask;
    if (b->keys[i] == UINT64_MAX) {
        if (b->count * 2 + 2 > b->mask + 1)
            return RC_ERANGE;
        b->keys[i] = key;
        b->count++;
    }
    b->vals[i] = val;
    return 0;
}

int bpe_check_ambiguous(struct bpe *b, size_t n_ids)
{
    uint8_t *seen = rc_calloc(n_ids ? n_ids : 1, 1);
    if (!seen)
        return RC_ENOMEM;
    b->ambiguous = 0;
    for (size_t i = 0; i <= b->mask && !b->ambiguous; i++) {
        if (b->keys[i] == UINT64_MAX)
            continue;
        uint32_t id = (uint32_t)b->vals[i];
        if (id < n_ids) {
            b->ambiguous = seen[id];
            seen[id] = 1;
        }
    }
    rc_free(seen);
    return 0;
}

/* ---- whole-word table (ignore_merges) ------------------------------------ */

static uint64_t word_hash(const uint8_t *s, size_t n)
{
    uint64_t h = XXH3_64bits(s, n);
    return h ? h : 1;
}

int bpe_words_init(struct bpe *b, size_t n)
{
    size_t cap = pow2_at_least(n * 2 + 1);
    b->word_keys = rc_calloc(cap, sizeof *b->word_keys);
    b->word_ids = rc_malloc(cap * sizeof *b->word_ids);
    b->word_off = rc_malloc(cap * sizeof *b->word_off);
    b->word_len = rc_malloc(cap * sizeof *b->word_len);
    if (!b->word_keys || !b->word_ids || !b->word_off || !b->word_len)
        return RC_ENOMEM;
    b->word_mask = cap - 1;
    return 0;
}

int bpe_add_word(struct bpe *b, const uint8_t *s, size_t n, int32_t id)
{
    if (n == 0)
        return 0; /* an empty vocab key: no word is empty */
    if (n > UINT32_MAX || b->word_count * 2 + 2 > b->word_mask + 1)
        return RC_ERANGE;
    if (bpe_find_word(b, s, n) >= 0)
        return 0; /* two spellings of one byte string: the first stays */
    if (b->word_pool_len + n > b->word_pool_cap) {
        size_t cap = b->word_pool_cap ? b->word_pool_cap : 1 << 16;
        while (cap < b->word_pool_len + n)
            cap *= 2;
        if (cap > UINT32_MAX)
            return RC_ERANGE;
        uint8_t *p = rc_realloc(b->word_pool, cap);
        if (!p)
            return RC_ENOMEM;
        b->word_pool = p;
        b->word_pool_cap = cap;
    }
    uint64_t h = word_hash(s, n);
    size_t i = (size_t)h & b->word_mask;
    while (b->word_keys[i])
        i = (i + 1) & b->word_mask;
    b->word_keys[i] = h;
    b->word_ids[i] = id;
    b->word_off[i] = (uint32_t)b->word_pool_len;
    b->word_len[i] = (uint32_t)n;
    memcpy(b->word_pool + b->word_pool_len, s, n);
    b->word_pool_len += n;
    b->word_count++;
    return 0;
}

int32_t bpe_find_word(const struct bpe *b, const uint8_t *s, size_t n)
{
    if (!b->word_keys)
        return -1;
    uint64_t h = word_hash(s, n);
    size_t i = (size_t)h & b->word_mask;
    while (b->word_keys[i]) {
        if (b->word_keys[i] == h && b->word_len[i] == n &&
            !memcmp(b->word_pool + b->word_off[i], s, n))
            return b->word_ids[i];
        i = (i + 1) & b->word_mask;
    }
    return -1;
}

/* ---- the merge loop ------------------------------------------------------- */

struct bpe_sym {
    int32_t c;    /* token id */
    int32_t prev; /* index of the previous live symbol, -1 at the start */
    int32_t next; /* index of the next live symbol, -1 at the end */
    uint32_t len; /* 0 once merged into its left neighbour */
};

struct bpe_cand {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
};

static inline int cand_before(const struct bpe_cand *x, const struct bpe_cand *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(struct bpe_cand *h, size_t *n, struct bpe_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static struct bpe_cand heap_pop(struct bpe_cand *h, size_t *n)
{
    struct bpe_cand top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m)
            break;
        size_t s = (l + 1 < m && cand_before(&h[l + 1], &h[l])) ? l + 1 : l;
        if (!cand_before(&h[s], &last))
            break;
        h[i] = h[s];
        i = s;
    }
    if (m)
        h[i] = last;
    return top;
}

void bpe_work_free(struct bpe_work *w)
{
    rc_free(w->sym);
    rc_free(w->heap);
    memset(w, 0, sizeof *w);
}

static int work_reserve(struct bpe_work *w, size_t n)
{
    size_t heap_need;
    if (n > INT32_MAX / 4)
        return RC_ENOMEM;
    heap_need = 3 * n + 1; /* n - 1 initial candidates, at most 2 per merge */
    if (n > w->sym_cap) {
        size_t cap = n < 64 ? 64 : n;
        struct bpe_sym *s = rc_realloc(w->sym, cap * sizeof *s);
        if (!s)
            return RC_ENOMEM;
        w->sym = s;
        w->sym_cap = cap;
    }
    if (heap_need > w->heap_cap) {
        size_t cap = heap_need < 192 ? 192 : heap_need;
        struct bpe_cand *h = rc_realloc(w->heap, cap * sizeof *h);
        if (!h)
            return RC_ENOMEM;
        w->heap = h;
        w->heap_cap = cap;
    }
    return 0;
}

/* Short words: keep each adjacent pair's rank in an array and merge the lowest
 * (leftmost among equals) until none is left. The same merges in the same order as
 * the queue below whenever no two pairs make the same token (the queue only differs
 * by applying a stale entry, which needs such a pair), with O(n) lookups and no heap. */
#define SHORT_WORD 48

static int merge_short(const struct bpe *b, const struct bpe_sym *sym, size_t ns,
                       struct tok_ids *out)
{
    int32_t id[SHORT_WORD], nid[SHORT_WORD];
    uint32_t rk[SHORT_WORD];
    size_t n = ns;
    for (size_t i = 0; i < n; i++)
        id[i] = sym[i].c;
    for (size_t i = 0; i + 1 < n; i++)
        if (!bpe_lookup(b, id[i], id[i + 1], &rk[i], &nid[i]))
            rk[i] = UINT32_MAX;
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rk[i] < rk[best])
                best = i;
        if (rk[best] == UINT32_MAX)
            break;
        id[best] = nid[best];
        n--;
        for (size_t i = best + 1; i < n; i++) {
            id[i] = id[i + 1];
            rk[i] = rk[i + 1];
            nid[i] = nid[i + 1];
        }
        if (best > 0 && !bpe_lookup(b, id[best - 1], id[best], &rk[best - 1], &nid[best - 1]))
            rk[best - 1] = UINT32_MAX;
        if (best + 1 < n && !bpe_lookup(b, id[best], id[best + 1], &rk[best], &nid[best]))
            rk[best] = UINT32_MAX;
    }
    if (tok_ids_reserve(out, n))
        return RC_ENOMEM;
    memcpy(out->v + out->n, id, n * sizeof *id);
    out->n += n;
    return 0;
}

static inline void sym_add(struct bpe_sym *sym, size_t *n, int32_t c)
{
    size_t i = (*n)++;
    sym[i].c = c;
    sym[i].prev = (int32_t)i - 1;
    sym[i].next = -1;
    sym[i].len = 1;
    if (i > 0)
        sym[i - 1].next = (int32_t)i;
}

int bpe_encode_word(const struct bpe *b, struct bpe_work *w, const uint8_t *word, size_t n,
                    struct tok_ids *out)
{
    return bpe_encode_part(b, w, word, n, NULL, 1, out);
}

int bpe_encode_part(const struct bpe *b, struct bpe_work *w, const uint8_t *word, size_t n,
                    int *unk_carry, int last, struct tok_ids *out)
{
    /* Byte fallback can give a byte two symbols. */
    if (n > SIZE_MAX / 4 || work_reserve(w, 2 * n))
        return RC_ENOMEM;
    struct bpe_sym *sym = w->sym;
    size_t ns = 0;
    int unk_pending = unk_carry ? *unk_carry : 0;
    for (size_t i = 0; i < n && b->char_level;) {
        /* The reference's merge_word: per character, its vocab id, else its bytes'
         * <0xXX> ids (all or none), else the unknown token (fused or not). */
        size_t k = 1;
        if (word[i] >= 0x80)
            while (i + k < n && k < 4 && (word[i + k] & 0xC0) == 0x80)
                k++;
        int32_t id = -1;
        if (k == 1 && b->byte_kind[word[i]] == BPE_BYTE_VOCAB)
            id = b->byte_sym_ids[b->byte_sym_off[word[i]]];
        else if (k > 1)
            id = bpe_find_word(b, word + i, k);
        if (id >= 0) {
            if (unk_pending) {
                sym_add(sym, &ns, b->unk_id);
                unk_pending = 0;
            }
            sym_add(sym, &ns, id);
            i += k;
            continue;
        }
        int fb = b->byte_fallback;
        for (size_t j = 0; j < k && fb; j++)
            fb = b->fb_id[word[i + j]] >= 0;
        if (fb) { /* a pending unknown token stays pending, as in the reference */
            for (size_t j = 0; j < k; j++)
                sym_add(sym, &ns, b->fb_id[word[i + j]]);
            i += k;
            continue;
        }
        if (b->unk_id >= 0 || b->unk_missing) {
            if (b->unk_missing)
                return RC_EFORMAT;
            if (unk_pending && !b->fuse_unk)
                sym_add(sym, &ns, b->unk_id);
            unk_pending = 1;
        }
        i += k;
    }
    for (size_t i = 0; i < n && !b->char_level; i++) {
        unsigned x = word[i];
        unsigned o = b->byte_sym_off[x], e = b->byte_sym_off[x + 1];
        if (b->byte_kind[x] == BPE_BYTE_VOCAB) {
            if (unk_pending) {
                sym_add(sym, &ns, b->unk_id);
                unk_pending = 0;
            }
            sym_add(sym, &ns, b->byte_sym_ids[o]);
            continue;
        }
        if (b->byte_kind[x] == BPE_BYTE_FALLBACK) {
            /* In the reference, byte-fallback symbols do not flush a pending unknown
             * token; it is added later, after them. Same order here. */
            for (unsigned k = o; k < e; k++)
                sym_add(sym, &ns, b->byte_sym_ids[k]);
            continue;
        }
        if (b->unk_id >= 0 || b->unk_missing) {
            if (b->unk_missing)
                return RC_EFORMAT;
            if (unk_pending && !b->fuse_unk)
                sym_add(sym, &ns, b->unk_id);
            unk_pending = 1;
        }
        /* no unknown token: the byte is dropped, as the reference does */
    }
    if (unk_pending && last)
        sym_add(sym, &ns, b->unk_id);
    if (unk_carry)
        *unk_carry = unk_pending && !last;
    if (ns == 0)
        return 0;
    if (ns <= SHORT_WORD && !b->ambiguous)
        return merge_short(b, sym, ns, out);

    struct bpe_cand *heap = w->heap;
    size_t nh = 0;
    uint32_t rank;
    int32_t nid;
    for (size_t i = 0; i + 1 < ns; i++)
        if (bpe_lookup(b, sym[i].c, sym[i + 1].c, &rank, &nid))
            heap_push(heap, &nh, (struct bpe_cand){rank, (uint32_t)i, nid});
    while (nh) {
        struct bpe_cand top = heap_pop(heap, &nh);
        struct bpe_sym *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        struct bpe_sym right = sym[cur->next];
        /* A stale entry: the pair here changed since it was queued. */
        if (!bpe_lookup(b, cur->c, right.c, &rank, &nid) || nid != top.new_id)
            continue;
        sym[cur->next].len = 0;
        cur->c = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        if (right.next >= 0)
            sym[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && bpe_lookup(b, sym[cur->prev].c, cur->c, &rank, &nid))
            heap_push(heap, &nh, (struct bpe_cand){rank, (uint32_t)cur->prev, nid});
        if (cur->next >= 0 && bpe_lookup(b, cur->c, sym[cur->next].c, &rank, &nid))
            heap_push(heap, &nh, (struct bpe_cand){rank, top.pos, nid});
    }
    if (tok_ids_reserve(out, ns))
        return RC_ENOMEM;
    for (size_t i = 0; i < ns; i++)
        if (sym[i].len)
            out->v[out->n++] = sym[i].c;
    return 0;
}

/* ---- cache ---------------------------------------------------------------- */

struct bpe_cache_ent {
    uint64_t h; /* 0 = empty */
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
};

#define CACHE_MIN 1024
#define CACHE_MAX 65536              /* entries */
#define CACHE_KEYS_MAX (2u << 20)    /* bytes of keys, then start over */
#define CACHE_IDS_MAX (1u << 20)     /* ids, then start over */

void bpe_cache_free(struct bpe_cache *c)
{
    rc_free(c->ent);
    rc_free(c->keys);
    rc_free(c->ids);
    memset(c, 0, sizeof *c);
}

static void cache_clear(struct bpe_cache *c)
{
    memset(c->ent, 0, (c->mask + 1) * sizeof *c->ent);
    c->count = 0;
    c->keys_len = 0;
    c->ids_len = 0;
}

static const struct bpe_cache_ent *cache_find(const struct bpe_cache *c, uint64_t h,
                                              const uint8_t *s, size_t n)
{
    size_t i = (size_t)h & c->mask;
    for (;;) {
        const struct bpe_cache_ent *e = &c->ent[i];
        if (!e->h)
            return NULL;
        if (e->h == h && e->key_len == n && !memcmp(c->keys + e->key_off, s, n))
            return e;
        i = (i + 1) & c->mask;
    }
}

static void cache_place(struct bpe_cache *c, const struct bpe_cache_ent *src)
{
    size_t i = (size_t)src->h & c->mask;
    while (c->ent[i].h)
        i = (i + 1) & c->mask;
    c->ent[i] = *src;
    c->count++;
}

/* Best effort: a cache that cannot grow just stays as it is. */
static void cache_insert(struct bpe_cache *c, uint64_t h, const uint8_t *s, size_t n,
                         const int32_t *ids, size_t n_ids)
{
    if (!c->ent) {
        c->ent = rc_calloc(CACHE_MIN, sizeof *c->ent);
        if (!c->ent)
            return;
        c->mask = CACHE_MIN - 1;
    }
    if ((c->count + 1) * 2 > c->mask + 1) {
        size_t cap = (c->mask + 1) * 2;
        struct bpe_cache_ent *ne = cap <= CACHE_MAX ? rc_calloc(cap, sizeof *ne) : NULL;
        if (ne) {
            struct bpe_cache_ent *old = c->ent;
            size_t old_n = c->mask + 1;
            c->ent = ne;
            c->mask = cap - 1;
            c->count = 0;
            for (size_t i = 0; i < old_n; i++)
                if (old[i].h)
                    cache_place(c, &old[i]);
            rc_free(old);
        } else {
            cache_clear(c);
        }
    }
    if (c->keys_len + n > CACHE_KEYS_MAX || c->ids_len + n_ids > CACHE_IDS_MAX)
        cache_clear(c);
    if (c->keys_len + n > c->keys_cap) {
        size_t cap = c->keys_cap ? c->keys_cap * 2 : 1 << 14;
        uint8_t *k = rc_realloc(c->keys, cap);
        if (!k)
            return;
        c->keys = k;
        c->keys_cap = cap;
    }
    if (c->ids_len + n_ids > c->ids_cap) {
        size_t cap = c->ids_cap ? c->ids_cap * 2 : 1 << 13;
        int32_t *v = rc_realloc(c->ids, cap * sizeof *v);
        if (!v)
            return;
        c->ids = v;
        c->ids_cap = cap;
    }
    struct bpe_cache_ent e = {h, (uint32_t)c->keys_len, (uint32_t)c->ids_len, (uint16_t)n,
                              (uint16_t)n_ids};
    memcpy(c->keys + c->keys_len, s, n);
    c->keys_len += n;
    memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
    c->ids_len += n_ids;
    cache_place(c, &e);
}

int bpe_encode_cached(const struct bpe *b, struct bpe_work *w, struct bpe_cache *c,
                      const uint8_t *word, size_t n, int whole, struct tok_ids *out)
{
    if (b->ignore_merges && whole) {
        int32_t id = bpe_find_word(b, word, n);
        if (id >= 0)
            return tok_ids_push(out, id);
    }
    if (n > BPE_CACHE_MAX_WORD || !c)
        return bpe_encode_word(b, w, word, n, out);
    uint64_t h = word_hash(word, n);
    if (c->ent) {
        const struct bpe_cache_ent *e = cache_find(c, h, word, n);
        if (e) {
            c->hits++;
            if (e->n_ids == 0)
                return 0;
            if (tok_ids_reserve(out, e->n_ids))
                return RC_ENOMEM;
            memcpy(out->v + out->n, c->ids + e->ids_off, e->n_ids * sizeof *out->v);
            out->n += e->n_ids;
            return 0;
        }
    }
    c->misses++;
    size_t start = out->n;
    int rc = bpe_encode_word(b, w, word, n, out);
    if (rc == 0 && out->n > start)
        cache_insert(c, h, word, n, out->v + start, out->n - start);
    return rc;
}
