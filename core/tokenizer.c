/*
 * tokenizer.c — encoding (one-shot and streaming) and decoding.
 *
 * The encoder is the reference's pipeline, run as a chain of stages that each hold
 * back only what more text could still change:
 *
 *   bytes ─► UTF-8 repair ─► raw_stage: added tokens (normalized=false) on the raw text
 *     (holds ≤ 3 bytes)        (holds a possible token prefix)
 *       ─► normalize_segment: the normaliser, per segment between added tokens
 *          (norm_in holds the text after the last normalisation boundary)
 *         ─► norm_stage: added tokens (normalized=true) on the normalised segment
 *           ─► piece_*: pre-tokenizer on the piece between added tokens: step 0's regex
 *              runs with PCRE2_PARTIAL_HARD, so a match that touches the end of the
 *              buffer (or whose lookahead would) is not trusted yet; pieces that a
 *              split behaviour could still extend are held too; the rest of the steps
 *              and BPE run on complete pieces only.
 *
 * A stage's output for the text it releases is the output of the whole-text run
 * because everything it releases is, by construction, independent of later text;
 * the streaming tests check this on every golden text at thousands of split points.
 * tokenizer_encode() is the same chain fed everything at once, with no caps.
 */
#include "tokenizer.h"

#include <stddef.h>
#include <string.h>

#include "alloc.h"
#include "errors.h"
#include "tokenizer_impl.h"
#include "utf8.h"

/* Stage pumping is amortised: a pump rescans held text, so it runs only once the
 * input since the last pump is at least as large as what is held (and PUMP_MIN). */
#define PUMP_MIN 4096
#define ONESHOT_CHUNK ((size_t)64 << 10)

struct match_stage {
    struct tok_bytes buf;
    size_t start_offset; /* text before this was released (or is inside a token) */
    size_t scan;         /* the trie search resumes here */
    int32_t prev_cp;     /* the character before buf[0] in this sentence, -1: none */
};

struct leaf_rec {
    size_t w_off;        /* offset in the window, SIZE_MAX if not a slice of it */
    size_t len;
    size_t ids_start, ids_end;
    int sub_start;       /* first leaf of a step-0 piece */
    int prefix;          /* 1: the leaf starts with a ByteLevel prefix space that is
                          * not in the window (w_off is where its text starts) */
};

struct tok_encoder {
    const tokenizer_t *tok;
    unsigned flags;
    size_t cap;            /* max_pending */
    int finished, failed;
    uint8_t u8[4];         /* an incomplete UTF-8 character carried over */
    size_t u8_n;
    struct match_stage raw_stage;  /* raw text, added tokens with normalized = false */
    struct tok_bytes norm_in;      /* raw text of the current segment, not yet normalised */
    struct nstep_state ns[NORM_MAX_STEPS]; /* per normaliser step: held text */
    struct tok_bytes nbuf[2];      /* between normaliser steps */
    int started;           /* something (a piece or an added token) came out already */
    int word_cut;          /* the current word was cut at a barrier: no ignore_merges */
    int cut_open;          /* encoding a part before a barrier (not the word's last) */
    int unk_carry;         /* an unknown token pending across the last barrier */
    struct match_stage norm_stage; /* normalised text, added tokens with normalized = true */
    struct tok_bytes piece;        /* the current piece for the pre-tokenizer */
    size_t piece_ctx;      /* bytes of left context at the front of piece */
    int piece_fresh;       /* nothing of this piece seen yet (prefix space pending) */
    int piece_cont;        /* resumes after a window cut: no prefix space for it */
    size_t since_pump;     /* bytes fed since the last pump */
    struct tok_ids ids;         /* output */
    /* scratch */
    struct pt_ranges ranges, pieces;
    struct pt_ranges lr[PT_MAX_STEPS], lp[PT_MAX_STEPS];
    struct tok_bytes lvl[PT_MAX_STEPS];
    struct norm_work nw;
    struct pretok_work pw;
    int pw_ready;
    struct bpe_work bw;
    struct bpe_cache cache;
    /* window mode (a pre-token longer than cap) */
    int collect;
    const uint8_t *win;
    size_t win_len;
    struct tok_ids wids;
    struct leaf_rec *leaves;
    size_t n_leaves, cap_leaves;
    int leaf_sub_start;    /* the next leaf starts a step-0 piece */
    const uint8_t *pfx_src, *pfx_buf; /* the piece a prefix space was added to, and
                                       * the copy (" " + piece) the leaves come from */
    size_t pfx_len;
    char *err;
    size_t errlen;
};

/* ---- small helpers -------------------------------------------------------------- */

static int32_t cp_at(const uint8_t *s, size_t i)
{
    uint32_t c;
    utf8_decode(s + i, &c);
    return (int32_t)c;
}

static int32_t cp_before(const uint8_t *s, size_t i) { return cp_at(s, utf8_prev(s, i)); }

static int enc_nomem(tok_encoder_t *e) { return rc_fail(e->err, e->errlen, RC_ENOMEM, "out of memory"); }

static int out_id(tok_encoder_t *e, int32_t id)
{
    return tok_ids_push(&e->ids, id) ? enc_nomem(e) : 0;
}

/* ---- BPE leaves and pre-tokenizer steps -------------------------------------------- */

static int step_behavior(const struct pt_step *st)
{
    return st->kind == PT_BYTELEVEL ? SB_ISOLATED : st->behavior;
}

static int leaf(tok_encoder_t *e, const uint8_t *s, size_t n)
{
    const tokenizer_t *tok = e->tok;
    struct tok_ids *dst = e->collect ? &e->wids : &e->ids;
    size_t start = dst->n;
    /* A part of a word cut at a barrier is never the whole word (no ignore_merges), and
     * an unknown token pending at the barrier carries over. A window (collect) only
     * looks: it starts from the carried state but does not change it. */
    int carry = e->unk_carry, rc;
    if (e->word_cut && !tok->bpe.no_unk)
        rc = bpe_encode_part(&tok->bpe, &e->bw, s, n, e->collect ? &carry : &e->unk_carry,
                             !e->cut_open, dst);
    else /* without unknown tokens a part is encoded like a word, through the cache */
        rc = bpe_encode_cached(&tok->bpe, &e->bw, &e->cache, s, n, !e->word_cut, dst);
    if (rc == RC_EFORMAT)
        return rc_fail(e->err, e->errlen, rc,
                       "a byte has no token and the unk_token is not in the vocab");
    if (rc)
        return enc_nomem(e);
    if (e->collect) {
        if (e->n_leaves == e->cap_leaves) {
            size_t cap = e->cap_leaves ? e->cap_leaves * 2 : 64;
            struct leaf_rec *l = rc_realloc(e->leaves, cap * sizeof *l);
            if (!l)
                return enc_nomem(e);
            e->leaves = l;
            e->cap_leaves = cap;
        }
        const uint8_t *real = s;
        int prefix = 0;
        if (e->pfx_buf && s >= e->pfx_buf && s + n <= e->pfx_buf + e->pfx_len) {
            prefix = s == e->pfx_buf;
            real = e->pfx_src + (s - e->pfx_buf) - (prefix ? 0 : 1);
        }
        int slice = real >= e->win && real + (n - (size_t)prefix) <= e->win + e->win_len;
        e->leaves[e->n_leaves++] = (struct leaf_rec){
            slice ? (size_t)(real - e->win) : SIZE_MAX, n, start, dst->n, e->leaf_sub_start,
            prefix};
        e->leaf_sub_start = 0;
    }
    return 0;
}

/* Apply pre-tokenizer steps k.. to a complete piece, then BPE. no_prefix: this piece
 * continues one cut by the window logic, so ByteLevel adds no prefix space to it. */
static int steps_from(tok_encoder_t *e, int k, const uint8_t *s, size_t n, int no_prefix)
{
    const struct pretok *pre = &e->tok->pre;
    if (n == 0)
        return 0;
    if (k == pre->n)
        return leaf(e, s, n);
    const struct pt_step *st = &pre->step[k];
    if (st->kind == PT_BYTELEVEL) {
        if (st->add_prefix_space && !no_prefix && s[0] != ' ') {
            struct tok_bytes *b = &e->lvl[k];
            b->n = 0;
            if (tok_bytes_append(b, " ", 1) || tok_bytes_append(b, s, n))
                return enc_nomem(e);
            e->pfx_src = s;
            e->pfx_buf = b->p;
            e->pfx_len = b->n;
            s = b->p;
            n = b->n;
        }
        if (!st->use_regex)
            return steps_from(e, k + 1, s, n, 0);
    }
    struct pt_ranges *r = &e->lr[k], *p = &e->lp[k];
    size_t certain, consumed = 0;
    r->n = 0;
    p->n = 0;
    int rc = pretok_scan(st, &e->pw, s, 0, 0, n, 1, r, &certain, e->err, e->errlen);
    if (rc)
        return rc;
    int behavior = step_behavior(st);
    if (pretok_fold(r->r, r->n, behavior, st->kind == PT_SPLIT && st->invert, 0, p, &consumed))
        return enc_nomem(e);
    /* p->r may move if a deeper level reuses... it does not: each level owns lp[k]. */
    for (size_t i = 0; i < p->n; i++) {
        rc = steps_from(e, k + 1, s + p->r[i].start, p->r[i].end - p->r[i].start, 0);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- the piece between added tokens: pre-tokenizer and BPE ------------------------ */

static void piece_reset(tok_encoder_t *e)
{
    e->word_cut = 0;
    e->cut_open = 0;
    e->unk_carry = 0;
    e->piece.n = 0;
    e->piece_ctx = 0;
    e->piece_fresh = 1;
    e->piece_cont = 0;
}

static int piece_append(tok_encoder_t *e, const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    const struct pt_step *ms = &e->tok->pre.step[0];
    if (ms->kind == PT_METASPACE) {
        /* The reference's Metaspace on this piece: spaces become the replacement, which
         * is put in front unless the piece starts with it (scheme "always"; "first":
         * only for the piece at offset 0 of the text, nothing before it). */
        size_t rl = (size_t)ms->rep_len;
        if (e->piece_fresh) {
            e->piece_fresh = 0;
            int has = s[0] == ' ' || (n >= rl && !memcmp(s, ms->rep, rl));
            if (!has && (ms->prepend == MS_ALWAYS || (ms->prepend == MS_FIRST && !e->started)) &&
                tok_bytes_append(&e->piece, ms->rep, rl))
                return enc_nomem(e);
        }
        e->started = 1;
        size_t from = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] != ' ')
                continue;
            if (tok_bytes_append(&e->piece, s + from, i - from) ||
                tok_bytes_append(&e->piece, ms->rep, rl))
                return enc_nomem(e);
            from = i + 1;
        }
        return tok_bytes_append(&e->piece, s + from, n - from) ? enc_nomem(e) : 0;
    }
    e->started = 1;
    if (e->piece_fresh) {
        const struct pt_step *st = &e->tok->pre.step[0];
        e->piece_fresh = 0;
        if (st->kind == PT_BYTELEVEL && st->add_prefix_space && s[0] != ' ' &&
            tok_bytes_append(&e->piece, " ", 1))
            return enc_nomem(e);
    }
    return tok_bytes_append(&e->piece, s, n) ? enc_nomem(e) : 0;
}

/* Emit a complete step-0 sub-piece. */
static int subpiece(tok_encoder_t *e, const uint8_t *s, size_t n)
{
    int cont = e->piece_cont;
    e->piece_cont = 0;
    return steps_from(e, 1, s, n, cont);
}

/* Drop piece bytes before `upto`, keeping the left context the step-0 pattern may
 * look at (at least one character: ^ and \A must not match at a cut). */
static void piece_trim(tok_encoder_t *e, size_t upto)
{
    const struct pt_step *st = &e->tok->pre.step[0];
    uint32_t lb = st->lookbehind > 0 ? st->lookbehind : 1;
    size_t keep = upto;
    for (uint32_t i = 0; i < lb && keep > 0; i++)
        keep = utf8_prev(e->piece.p, keep);
    tok_bytes_drop_front(&e->piece, keep);
    e->piece_ctx = upto - keep;
}

/* The bytes of a word that token id covers: its piece for a byte-level vocab; for a
 * text vocab its string, one byte for a byte-fallback token, and for the unknown token
 * a length no sum can match (a window is then not cut inside its leaf). */
static size_t span_len(const tokenizer_t *tok, int32_t id)
{
    if (!tok->raw_pool)
        return tok->piece_off[id + 1] - tok->piece_off[id];
    const uint8_t *r = tok->raw_pool + tok->raw_off[id];
    size_t n = tok->raw_off[id + 1] - tok->raw_off[id];
    if (id == tok->bpe.unk_id)
        return (size_t)1 << 40;
    if (n == 6 && tok->bpe.byte_fallback && r[0] == '<' && r[5] == '>') {
        for (int b = 0; b < 256; b++)
            if (tok->bpe.fb_id[b] == id)
                return 1;
    }
    return n;
}

/* Held text longer than the cap (one pre-token that keeps growing, in practice):
 * encode a window of cap bytes as if the text ended there, commit the tokens before
 * the last token boundary in its first half, keep the rest. See tokenizer.h for
 * when this is exact. */
static int piece_encode_window(tok_encoder_t *e)
{
    const tokenizer_t *tok = e->tok;
    const struct pt_step *st0 = &tok->pre.step[0];
    const uint8_t *P = e->piece.p;
    size_t start = e->piece_ctx, len = e->cap;
    if (len > e->piece.n - start)
        len = e->piece.n - start;
    while (len > 0 && start + len < e->piece.n && (P[start + len] & 0xC0) == 0x80)
        len--; /* end the window on a character boundary */
    e->collect = 1;
    e->win = P + start;
    e->win_len = len;
    e->wids.n = 0;
    e->n_leaves = 0;
    int cont = e->piece_cont, rc = 0;
    e->piece_cont = 0;
    if (!tok->first_split) {
        e->leaf_sub_start = 1;
        rc = steps_from(e, 1, P + start, len, cont);
    } else {
        /* The window may hold several step-0 pieces (held by a split behaviour). */
        size_t certain, consumed = start;
        e->ranges.n = 0;
        e->pieces.n = 0;
        rc = pretok_scan(st0, &e->pw, P, 0, start, start + len, 1, &e->ranges, &certain, e->err,
                         e->errlen);
        if (!rc && pretok_fold(e->ranges.r, e->ranges.n,
                               step_behavior(st0),
                               st0->kind == PT_SPLIT && st0->invert, 0, &e->pieces, &consumed))
            rc = enc_nomem(e);
        for (size_t i = 0; !rc && i < e->pieces.n; i++) {
            e->leaf_sub_start = 1;
            rc = steps_from(e, 1, P + e->pieces.r[i].start, e->pieces.r[i].end - e->pieces.r[i].start,
                            i == 0 && cont && e->pieces.r[i].start == start);
        }
    }
    e->collect = 0;
    e->pfx_buf = NULL;
    if (rc)
        return rc;
    /* Candidate cuts: token boundaries inside leaves that are slices of the window
     * and whose tokens spell them exactly. */
    size_t half = len / 2, best = 0, best_ids = 0, first = SIZE_MAX, first_ids = 0;
    int best_sub = 0, first_sub = 0;
    for (size_t li = 0; li < e->n_leaves; li++) {
        const struct leaf_rec *L = &e->leaves[li];
        if (L->w_off == SIZE_MAX)
            continue;
        size_t sum = 0;
        ptrdiff_t off = (ptrdiff_t)L->w_off - L->prefix;
        for (size_t j = L->ids_start; j < L->ids_end; j++) {
            int32_t id = e->wids.v[j];
            sum += span_len(tok, id);
        }
        if (sum != L->len)
            continue;
        for (size_t j = L->ids_start; j <= L->ids_end; j++) {
            int sub = j == L->ids_start && L->sub_start;
            /* The leaf's start is where its text starts, prefix space or not. */
            ptrdiff_t at = j == L->ids_start ? (ptrdiff_t)L->w_off : off;
            if (at > 0 && (size_t)at < len) {
                if ((size_t)at <= half && (size_t)at > best) {
                    best = (size_t)at;
                    best_ids = j;
                    best_sub = sub;
                }
                if ((size_t)at > half && (size_t)at < first) {
                    first = (size_t)at;
                    first_ids = j;
                    first_sub = sub;
                }
            }
            if (j < L->ids_end) {
                int32_t id = e->wids.v[j];
                off += span_len(tok, id);
            }
        }
    }
    size_t cut = best, n_ids = best_ids;
    int sub = best_sub;
    if (cut == 0) {
        cut = first != SIZE_MAX ? first : len;
        n_ids = first != SIZE_MAX ? first_ids : e->wids.n;
        sub = first != SIZE_MAX ? first_sub : 0;
    }
    if (tok_ids_reserve(&e->ids, n_ids))
        return enc_nomem(e);
    if (n_ids) {
        memcpy(e->ids.v + e->ids.n, e->wids.v, n_ids * sizeof *e->ids.v);
        e->ids.n += n_ids;
    }
    piece_trim(e, start + cut);
    /* Cut inside a step-0 piece: its rest must not get a prefix space. */
    e->piece_cont = !sub;
    return 0;
}

/* ---- barriers: where a word of a text vocab may be cut -------------------------------
 *
 * With no pre-tokenizer (legacy Llama: the normaliser turns the whole segment into
 * "▁Hello▁world...") or Metaspace without split, a segment is ONE BPE word, possibly
 * as long as the document. It may still be encoded in parts, exactly: BPE of a word
 * x|y equals BPE(x) followed by BPE(y) when no merge can ever join a symbol ending at
 * the cut with one starting there (the two halves' merges never interact: the queue
 * order between non-overlapping pairs does not change what they merge into). A merge
 * (a, b) joins across the cut only if a's string ends with the last initial symbol
 * before the cut and b's starts with the first after it, so the loader records, for
 * every merge, (last character | byte-fallback token | unk of a, first ... of b); a
 * character boundary whose pair is not recorded is a barrier. The pair is that of the
 * symbols that really meet there: the reference writes a pending unknown token only at
 * the next vocab character, after any byte-fallback symbols, so the scan replays that
 * order and the unk carries over to the next part (bpe_encode_part). Also needed: no
 * byte dropped beside the cut, and under ignore_merges no vocab entry spanning it (the
 * whole word could be one); the parts skip the whole-word lookup (word_cut). Where no
 * barrier exists the cap's window encoding below applies (tokenizer.h says when that
 * is exact). */

/* The initial symbol(s) of one character: 1 vocab, 2 byte fallback, 3 unk, 0 none. */
static int char_sym(const struct bpe *b, const uint8_t *s, size_t k, uint32_t *lk, uint32_t *rk,
                    uint32_t *cp)
{
    int32_t id = -1;
    utf8_decode(s, cp);
    if (k == 1 && b->byte_kind[s[0]] == BPE_BYTE_VOCAB)
        id = b->byte_sym_ids[b->byte_sym_off[s[0]]];
    else if (k > 1)
        id = bpe_find_word(b, s, k);
    if (id >= 0) {
        *lk = *rk = *cp;
        return 1;
    }
    int fb = b->byte_fallback;
    for (size_t j = 0; j < k && fb; j++)
        fb = b->fb_id[s[j]] >= 0;
    if (fb) {
        *lk = BAR_SPECIAL + (uint32_t)b->fb_id[s[k - 1]];
        *rk = BAR_SPECIAL + (uint32_t)b->fb_id[s[0]];
        return 2;
    }
    if (b->unk_id >= 0) {
        *lk = *rk = BAR_SPECIAL + (uint32_t)b->unk_id;
        return 3;
    }
    return 0;
}

static int bar_has(const tokenizer_t *tok, uint64_t key)
{
    if (!tok->bar_keys)
        return 0;
    size_t j = (size_t)(key * 0x9E3779B97F4A7C15ULL >> 20) & tok->bar_mask;
    while (tok->bar_keys[j]) {
        if (tok->bar_keys[j] == key)
            return 1;
        j = (j + 1) & tok->bar_mask;
    }
    return 0;
}

/* Every barrier in the held word after its first character, in order, into bars
 * (start = end = the position); returns the last, 0 if none. The scan
 * replays bpe_encode_part's symbol order from the carried unknown-token state: at a
 * boundary, the pair that would meet is the last symbol the left part wrote and the
 * first one the right part writes (a pending unk first if the right starts with a
 * vocab character); where that is not known yet (the right starts with an unknown
 * character that fuses, or none is written) it is no barrier. */
static size_t find_barriers(const tokenizer_t *tok, const uint8_t *p, size_t from, size_t n,
                            int carry, struct pt_ranges *bars, int *nomem)
{
    const struct bpe *b = &tok->bpe;
    const uint32_t unk = BAR_SPECIAL + (uint32_t)b->unk_id;
    size_t best = 0, i = from;
    int pending = carry, have_last = 0, first = 1;
    uint32_t last = 0, prev_cp = 0;
    while (i < n) {
        size_t k = 1;
        if (p[i] >= 0x80)
            while (i + k < n && k < 4 && (p[i + k] & 0xC0) == 0x80)
                k++;
        uint32_t lk = 0, rk = 0, cp = 0;
        int kind = char_sym(b, p + i, k, &lk, &rk, &cp);
        /* The first symbol the right part would write, if known. */
        int known = kind == 2 || (kind == 1) || (kind == 3 && pending && !b->fuse_unk);
        uint32_t right = (kind == 1 || kind == 3) && pending ? unk : rk;
        if (!first && have_last && known && kind > 0 && !bar_has(tok, bar_pair(last, right)) &&
            !(b->ignore_merges && bar_has(tok, bar_pair(prev_cp, cp)))) {
            best = i;
            if (bars->n == bars->cap) {
                size_t cap = bars->cap ? bars->cap * 2 : 64;
                struct pt_range *r = rc_realloc(bars->r, cap * sizeof *r);
                if (!r) {
                    *nomem = 1;
                    return 0;
                }
                bars->r = r;
                bars->cap = cap;
            }
            bars->r[bars->n++] = (struct pt_range){i, i, 0};
        }
        /* What this character writes, and the pending state after it. */
        if (kind == 1) {
            last = lk;
            have_last = 1;
            pending = 0;
        } else if (kind == 2) {
            last = lk;
            have_last = 1;
        } else if (kind == 3) {
            if (pending && !b->fuse_unk) {
                last = unk;
                have_last = 1;
            }
            pending = 1;
        } else {
            have_last = 0; /* a dropped byte: the symbols around it meet; no cut here */
        }
        prev_cp = cp;
        first = 0;
        i += k;
    }
    return best;
}

static int piece_pretokenize(tok_encoder_t *e, int final)
{
    const tokenizer_t *tok = e->tok;
    const struct pt_step *st = &tok->pre.step[0];
    int rc = 0;
    if (e->piece.n > e->piece_ctx) {
        if (!tok->first_split) {
            /* ByteLevel without its regex first, or no pre-tokenizer, or Metaspace
             * without split: the whole piece is one pre-token. A text vocab's word may
             * be cut at a barrier (above). */
            if (final) {
                rc = subpiece(e, e->piece.p + e->piece_ctx, e->piece.n - e->piece_ctx);
            } else if (!tok->bytelevel && tok->pre.n == 1) {
                /* Each part between barriers on its own: usually one word each
                 * ("▁the"), so the cache serves most of them. */
                int oom = 0;
                e->ranges.n = 0;
                size_t cut = find_barriers(tok, e->piece.p, e->piece_ctx, e->piece.n,
                                           e->word_cut ? e->unk_carry : 0, &e->ranges, &oom);
                if (oom)
                    return enc_nomem(e);
                if (cut > e->piece_ctx) {
                    size_t at = e->piece_ctx;
                    e->word_cut = e->cut_open = 1;
                    for (size_t i = 0; i < e->ranges.n && !rc; i++) {
                        size_t to = e->ranges.r[i].start;
                        rc = steps_from(e, 1, e->piece.p + at, to - at, 1);
                        at = to;
                    }
                    e->cut_open = 0;
                    if (!rc)
                        piece_trim(e, cut);
                }
            }
        } else {
            size_t certain, consumed = e->piece_ctx;
            e->ranges.n = 0;
            e->pieces.n = 0;
            rc = pretok_scan(st, &e->pw, e->piece.p, 0, e->piece_ctx, e->piece.n, final,
                             &e->ranges, &certain, e->err, e->errlen);
            if (!rc && pretok_fold(e->ranges.r, e->ranges.n,
                                   step_behavior(st),
                                   st->kind == PT_SPLIT && st->invert, !final, &e->pieces,
                                   &consumed))
                rc = enc_nomem(e);
            for (size_t i = 0; !rc && i < e->pieces.n; i++)
                rc = subpiece(e, e->piece.p + e->pieces.r[i].start,
                              e->pieces.r[i].end - e->pieces.r[i].start);
            if (!rc && !final)
                piece_trim(e, consumed);
        }
    }
    if (rc)
        return rc;
    if (final) {
        piece_reset(e);
        return 0;
    }
    while (e->piece.n - e->piece_ctx > e->cap)
        if ((rc = piece_encode_window(e)))
            return rc;
    return 0;
}

static int piece_finish(tok_encoder_t *e) { return piece_pretokenize(e, 1); }

/* ---- added tokens (raw_stage, norm_stage), the normaliser between them ---------------- */

static void stage_reset(struct match_stage *st)
{
    st->buf.n = 0;
    st->start_offset = st->scan = 0;
    st->prev_cp = -1;
}

typedef int (*text_fn)(tok_encoder_t *, const uint8_t *, size_t);
typedef int (*token_fn)(tok_encoder_t *, int32_t);

/* The reference's AddedVocabulary::find_matches over st->buf, incrementally.
 * final: the sentence ends at the end of the buffer. force: release everything as if
 * it did, but keep the sentence going (only when the held text passed the cap). */
static int match_run(tok_encoder_t *e, const struct tok_matcher *m, struct match_stage *st,
                     int final, int force, text_fn text, token_fn token)
{
    const tokenizer_t *tok = e->tok;
    const uint8_t *b = st->buf.p;
    size_t n = st->buf.n, hold = n;
    int fin = final || force;
    int rc;
    for (;;) {
        size_t ms = 0, me = 0;
        int32_t v = -1;
        int r = trie_find(&m->trie, b, n, st->scan, fin, &ms, &me, &v);
        /* Nothing can start before ms (TRIE_LIVE) or before n (TRIE_NONE). */
        if (r == TRIE_LIVE) {
            hold = st->scan = ms;
            break;
        }
        if (r == TRIE_NONE) {
            st->scan = n;
            break;
        }
        const struct tok_added *a = &tok->added[v];
        if ((e->flags & TOK_ENCODE_NO_SPECIAL) && (a->flags & ADDF_SPECIAL)) {
            st->scan = me;
            continue;
        }
        if (a->flags & ADDF_SINGLE_WORD) {
            if (me == n && !fin) {
                hold = ms;
                break;
            }
            int32_t before = ms > 0 ? cp_before(b, ms) : st->prev_cp;
            int start_ok = before < 0 || !pretok_is_word((uint32_t)before);
            int stop_ok = me == n || !pretok_is_word((uint32_t)cp_at(b, me));
            if (!start_ok || !stop_ok) {
                st->scan = me;
                continue;
            }
        }
        size_t start = ms, stop = me;
        if (a->flags & ADDF_LSTRIP) {
            size_t ws = ms;
            while (ws > 0 && pretok_is_space((uint32_t)cp_before(b, ws)))
                ws = utf8_prev(b, ws);
            start = ws > st->start_offset ? ws : st->start_offset;
        }
        if (a->flags & ADDF_RSTRIP) {
            while (stop < n && pretok_is_space((uint32_t)cp_at(b, stop))) {
                uint32_t c;
                stop += (size_t)utf8_decode(b + stop, &c);
            }
            if (stop == n && !fin) {
                hold = ms;
                break;
            }
        }
        if (st->start_offset < start && (rc = text(e, b + st->start_offset, start - st->start_offset)))
            return rc;
        if ((rc = token(e, a->id)))
            return rc;
        st->start_offset = stop;
        st->scan = me;
    }
    if (final) {
        if (st->start_offset < n && (rc = text(e, b + st->start_offset, n - st->start_offset)))
            return rc;
        stage_reset(st);
        return 0;
    }
    /* A later lstrip token could claim whitespace that ends the released text. */
    if (m->any_lstrip && !force)
        while (hold > st->start_offset && pretok_is_space((uint32_t)cp_before(b, hold)))
            hold = utf8_prev(b, hold);
    if (hold > st->start_offset) {
        if ((rc = text(e, b + st->start_offset, hold - st->start_offset)))
            return rc;
        st->start_offset = hold;
    }
    size_t keep = st->start_offset < st->scan ? st->start_offset : st->scan;
    if (keep > n)
        keep = n;
    if (keep > 0) {
        st->prev_cp = cp_before(b, keep);
        tok_bytes_drop_front(&st->buf, keep);
        st->start_offset -= keep;
        st->scan -= keep;
    }
    return 0;
}

static int on_norm_added_token(tok_encoder_t *e, int32_t id)
{
    int rc = piece_finish(e);
    e->started = 1;
    return rc ? rc : out_id(e, id);
}

/* Normalise the raw segment text (norm_in) into norm_stage's buffer, step by step;
 * each step holds back what later text could still change (nstep_feed). final: the
 * segment ends (all of it, and the next segment starts fresh). */
static int normalize_segment(tok_encoder_t *e, int final)
{
    const struct normalizer *nz = &e->tok->norm;
    const uint8_t *src = e->norm_in.p;
    size_t len = e->norm_in.n;
    int rc = 0;
    if (nz->n == 0) {
        rc = tok_bytes_append(&e->norm_stage.buf, src, len);
    } else {
        for (int k = 0; k < nz->n && !rc; k++) {
            struct tok_bytes *dst = k == nz->n - 1 ? &e->norm_stage.buf : &e->nbuf[k & 1];
            if (dst != &e->norm_stage.buf)
                dst->n = 0;
            rc = nstep_feed(&nz->step[k], &e->ns[k], &e->nw, src, len, final, e->cap, dst);
            src = dst->p;
            len = dst->n;
        }
    }
    if (rc)
        return rc == RC_ENOMEM ? enc_nomem(e) : rc_fail(e->err, e->errlen, rc, "normaliser failed");
    e->norm_in.n = 0;
    return 0;
}

static int match_norm_added(tok_encoder_t *e, int final)
{
    const struct tok_matcher *m = &e->tok->norm_match;
    int rc = match_run(e, m, &e->norm_stage, final, 0, piece_append, on_norm_added_token);
    if (!rc && !final && e->norm_stage.buf.n > e->cap)
        rc = match_run(e, m, &e->norm_stage, 0, 1, piece_append, on_norm_added_token);
    return rc;
}

static int on_raw_text(tok_encoder_t *e, const uint8_t *s, size_t n)
{
    return tok_bytes_append(&e->norm_in, s, n) ? enc_nomem(e) : 0;
}

/* A raw-text added token ends the segment: flush the normaliser, norm_stage and the
 * piece, then emit it. */
static int on_raw_added_token(tok_encoder_t *e, int32_t id)
{
    int rc = normalize_segment(e, 1);
    if (!rc)
        rc = match_norm_added(e, 1);
    if (!rc)
        rc = piece_finish(e);
    e->started = 1;
    return rc ? rc : out_id(e, id);
}

static int pump(tok_encoder_t *e, int final)
{
    const struct tok_matcher *m = &e->tok->raw_match;
    int rc = match_run(e, m, &e->raw_stage, final, 0, on_raw_text, on_raw_added_token);
    if (!rc && !final && e->raw_stage.buf.n > e->cap)
        rc = match_run(e, m, &e->raw_stage, 0, 1, on_raw_text, on_raw_added_token);
    if (!rc)
        rc = normalize_segment(e, final);
    if (!rc)
        rc = match_norm_added(e, final);
    if (!rc)
        rc = final ? piece_finish(e) : piece_pretokenize(e, 0);
    e->since_pump = 0;
    return rc;
}

/* ---- encoder API ---------------------------------------------------------------------- */

int tok_encoder_create(const tokenizer_t *tok, const struct tok_encoder_opts *opts,
                       tok_encoder_t **out, char *err, size_t errlen)
{
    *out = NULL;
    tok_encoder_t *e = rc_calloc(1, sizeof *e);
    if (!e)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    e->tok = tok;
    e->flags = opts ? opts->flags : 0;
    e->cap = opts && opts->max_pending ? opts->max_pending : TOK_ENCODER_DEFAULT_MAX_PENDING;
    if (e->cap < 256)
        e->cap = 256; /* windows must hold several tokens */
    stage_reset(&e->raw_stage);
    stage_reset(&e->norm_stage);
    piece_reset(e);
    if (tok->kind == TOK_KIND_BPE) {
        if (pretok_work_init(&e->pw, &tok->pre)) {
            tok_encoder_free(e);
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        }
        e->pw_ready = 1;
    }
    *out = e;
    return 0;
}

void tok_encoder_reset(tok_encoder_t *e)
{
    e->finished = e->failed = 0;
    e->u8_n = 0;
    stage_reset(&e->raw_stage);
    stage_reset(&e->norm_stage);
    e->norm_in.n = 0;
    for (int k = 0; k < NORM_MAX_STEPS; k++) {
        e->ns[k].held.n = 0;
        e->ns[k].prefixed = 0;
    }
    e->started = 0;
    piece_reset(e);
    e->ids.n = 0;
    e->since_pump = 0;
}

static int repair_into(tok_encoder_t *e, const uint8_t *s, size_t n, int final, size_t *used)
{
    if (tok_bytes_reserve(&e->raw_stage.buf, n * 3 + 3))
        return enc_nomem(e);
    struct tok_bytes *b = &e->raw_stage.buf;
    b->n += utf8_repair(s, n, final, b->p + b->n, used);
    return 0;
}

static int feed_bytes(tok_encoder_t *e, const uint8_t *s, size_t n)
{
    size_t used;
    if (n == 0)
        return 0;
    if (e->tok->kind == TOK_KIND_BYTES) {
        if (tok_ids_reserve(&e->ids, n))
            return enc_nomem(e);
        for (size_t i = 0; i < n; i++)
            e->ids.v[e->ids.n++] = s[i];
        return 0;
    }
    if (e->u8_n) {
        uint8_t t[8];
        size_t k = n < 3 ? n : 3;
        memcpy(t, e->u8, e->u8_n);
        memcpy(t + e->u8_n, s, k);
        size_t m = e->u8_n + k;
        if (repair_into(e, t, m, 0, &used))
            return RC_ENOMEM;
        if (used < e->u8_n) { /* still incomplete */
            memcpy(e->u8, t, m);
            e->u8_n = m;
            return 0;
        }
        s += used - e->u8_n;
        n -= used - e->u8_n;
        e->u8_n = 0;
    }
    if (repair_into(e, s, n, 0, &used))
        return RC_ENOMEM;
    memcpy(e->u8, s + used, n - used);
    e->u8_n = n - used;
    e->since_pump += n;
    return 0;
}

int tok_encoder_feed(tok_encoder_t *e, const void *bytes, size_t len, char *err, size_t errlen)
{
    e->err = err;
    e->errlen = errlen;
    if (e->failed)
        return rc_fail(err, errlen, RC_EINVAL, "encoder failed earlier; reset it");
    if (e->finished)
        return rc_fail(err, errlen, RC_EINVAL, "encoder finished; reset it first");
    if (len == 0)
        return 0;
    int rc = feed_bytes(e, bytes, len);
    if (!rc && e->tok->kind == TOK_KIND_BPE) {
        size_t held = tok_encoder_pending_bytes(e);
        if (e->since_pump >= PUMP_MIN && e->since_pump * 2 >= held)
            rc = pump(e, 0);
    }
    if (rc)
        e->failed = 1;
    return rc;
}

int tok_encoder_finish(tok_encoder_t *e, char *err, size_t errlen)
{
    e->err = err;
    e->errlen = errlen;
    if (e->failed)
        return rc_fail(err, errlen, RC_EINVAL, "encoder failed earlier; reset it");
    if (e->finished)
        return 0;
    int rc = 0;
    if (e->tok->kind == TOK_KIND_BPE) {
        if (e->u8_n) {
            size_t used;
            rc = repair_into(e, e->u8, e->u8_n, 1, &used);
            e->u8_n = 0;
        }
        if (!rc)
            rc = pump(e, 1);
    }
    if (rc)
        e->failed = 1;
    else
        e->finished = 1;
    return rc;
}

const int32_t *tok_encoder_ids(const tok_encoder_t *e, size_t *n)
{
    *n = e->ids.n;
    return e->ids.v;
}

void tok_encoder_take(tok_encoder_t *e, size_t n)
{
    if (n >= e->ids.n) {
        e->ids.n = 0;
        return;
    }
    memmove(e->ids.v, e->ids.v + n, (e->ids.n - n) * sizeof *e->ids.v);
    e->ids.n -= n;
}

size_t tok_encoder_pending_bytes(const tok_encoder_t *e)
{
    size_t held = 0;
    for (int k = 0; k < NORM_MAX_STEPS; k++)
        held += e->ns[k].held.n;
    return e->u8_n + e->raw_stage.buf.n + e->norm_in.n + held + e->norm_stage.buf.n +
           (e->piece.n - e->piece_ctx);
}

void tok_encoder_free(tok_encoder_t *e)
{
    if (!e)
        return;
    tok_bytes_free(&e->raw_stage.buf);
    tok_bytes_free(&e->norm_in);
    for (int k = 0; k < NORM_MAX_STEPS; k++)
        nstep_state_free(&e->ns[k]);
    tok_bytes_free(&e->nbuf[0]);
    tok_bytes_free(&e->nbuf[1]);
    tok_bytes_free(&e->norm_stage.buf);
    tok_bytes_free(&e->piece);
    tok_ids_free(&e->ids);
    tok_ids_free(&e->wids);
    pt_ranges_free(&e->ranges);
    pt_ranges_free(&e->pieces);
    for (int i = 0; i < PT_MAX_STEPS; i++) {
        pt_ranges_free(&e->lr[i]);
        pt_ranges_free(&e->lp[i]);
        tok_bytes_free(&e->lvl[i]);
    }
    norm_work_free(&e->nw);
    if (e->pw_ready)
        pretok_work_free(&e->pw);
    bpe_work_free(&e->bw);
    bpe_cache_free(&e->cache);
    rc_free(e->leaves);
    rc_free(e);
}

int tokenizer_encode(const tokenizer_t *tok, const char *text, size_t len, unsigned flags,
                     int32_t **ids, size_t *n_ids, char *err, size_t errlen)
{
    *ids = NULL;
    *n_ids = 0;
    tok_encoder_t *e;
    struct tok_encoder_opts o = {flags, SIZE_MAX};
    int rc = tok_encoder_create(tok, &o, &e, err, errlen);
    if (rc)
        return rc;
    /* Stage by stage over cache-sized chunks: the same ids as one piece (no cap), but
     * each stage's buffer stays small. */
    for (size_t off = 0; !rc && off < len; off += ONESHOT_CHUNK)
        rc = tok_encoder_feed(e, text + off, len - off < ONESHOT_CHUNK ? len - off : ONESHOT_CHUNK,
                              err, errlen);
    if (!rc)
        rc = tok_encoder_finish(e, err, errlen);
    if (!rc) {
        *ids = e->ids.v;
        *n_ids = e->ids.n;
        e->ids.v = NULL;
        e->ids.n = e->ids.cap = 0;
    }
    tok_encoder_free(e);
    return rc;
}

/* ---- decoding ------------------------------------------------------------------------- */

/* The text-vocab decoder chain: token strings in an arena, one list per step. */
struct span {
    size_t off, len;
};
struct dec_list {
    struct tok_bytes a;
    struct span *sp;
    size_t n, cap;
};
struct dec_work {
    struct dec_list l[2];
    struct pretok_work pw;
    int pw_ready;
    struct pt_ranges rr;
};

void tok_dec_work_free(struct dec_work *w)
{
    if (!w)
        return;
    for (int i = 0; i < 2; i++) {
        tok_bytes_free(&w->l[i].a);
        rc_free(w->l[i].sp);
    }
    if (w->pw_ready)
        pretok_work_free(&w->pw);
    pt_ranges_free(&w->rr);
    rc_free(w);
}

/* Start a new token in list l, or (extend) append to the last one. */
static int dl_push(struct dec_list *l, const void *s, size_t n, int extend)
{
    if (!extend) {
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 64;
            struct span *sp = rc_realloc(l->sp, cap * sizeof *sp);
            if (!sp)
                return RC_ENOMEM;
            l->sp = sp;
            l->cap = cap;
        }
        l->sp[l->n++] = (struct span){l->a.n, 0};
    }
    if (tok_bytes_reserve(&l->a, n ? n : 1) || tok_bytes_append(&l->a, s, n))
        return RC_ENOMEM; /* (reserved even for n == 0: the arena is never NULL) */
    l->sp[l->n - 1].len += n;
    return 0;
}

/* "<0xXX>" -> the byte (the reference: six bytes, "<0x", two characters that
 * u8::from_str_radix(_, 16) accepts, which includes "+X"), else -1. */
static int byte_token(const uint8_t *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
        return -1;
    int v = 0, digits = 0;
    for (int i = 3; i < 5; i++) {
        int c = s[i], d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0 && !(i == 3 && c == '+'))
            return -1;
        if (d >= 0) {
            v = v * 16 + d;
            digits++;
        }
    }
    return digits ? v : -1;
}

static int flush_bytes(struct dec_list *o, const uint8_t *b, size_t n, int standalone)
{
    int rc = 0;
    if (n == 0)
        return 0;
    if (standalone || utf8_valid(b, n))
        return dl_push(o, b, n, 0);
    for (size_t i = 0; i < n && !rc; i++) /* the reference: one U+FFFD per byte */
        rc = dl_push(o, "\xEF\xBF\xBD", 3, 0);
    return rc;
}

/* One decoder step, list in -> list o. */
static int dec_step_run(const tokenizer_t *tok, struct dec_work *w, const struct dec_step *d,
                        const struct dec_list *in, struct dec_list *o, int standalone)
{
    int rc = 0;
    o->a.n = 0;
    o->n = 0;
    if (d->kind == DEC_FUSE || (standalone && d->kind == DEC_STRIP)) {
        if (standalone) {
            for (size_t i = 0; i < in->n && !rc; i++)
                rc = dl_push(o, in->a.p + in->sp[i].off, in->sp[i].len, 0);
            return rc;
        }
        rc = dl_push(o, "", 0, 0);
        for (size_t i = 0; i < in->n && !rc; i++)
            rc = dl_push(o, in->a.p + in->sp[i].off, in->sp[i].len, 1);
        return rc;
    }
    if (d->kind == DEC_BYTEFALLBACK) {
        uint8_t run[256];
        size_t nrun = 0;
        struct tok_bytes big = {0};
        for (size_t i = 0; i < in->n && !rc; i++) {
            const uint8_t *t = in->a.p + in->sp[i].off;
            int b = byte_token(t, in->sp[i].len);
            if (b >= 0) {
                if (nrun < sizeof run)
                    run[nrun++] = (uint8_t)b;
                else {
                    if (big.n == 0)
                        rc = tok_bytes_append(&big, run, nrun);
                    uint8_t c = (uint8_t)b;
                    if (!rc)
                        rc = tok_bytes_append(&big, &c, 1);
                    nrun++;
                }
                continue;
            }
            rc = flush_bytes(o, big.n ? big.p : run, nrun, standalone);
            nrun = 0;
            big.n = 0;
            if (!rc)
                rc = dl_push(o, t, in->sp[i].len, 0);
        }
        if (!rc)
            rc = flush_bytes(o, big.n ? big.p : run, nrun, standalone);
        tok_bytes_free(&big);
        return rc;
    }
    for (size_t i = 0; i < in->n && !rc; i++) {
        const uint8_t *t = in->a.p + in->sp[i].off;
        size_t n = in->sp[i].len;
        if (d->kind == DEC_STRIP) {
            size_t a = 0, z = n, cl = (size_t)d->ch_len;
            for (size_t k = 0; k < d->start && a + cl <= z && !memcmp(t + a, d->ch, cl); k++)
                a += cl;
            for (size_t k = 0; k < d->stop && z >= a + cl && !memcmp(t + z - cl, d->ch, cl); k++)
                z -= cl;
            rc = dl_push(o, t + a, z - a, 0);
        } else if (d->kind == DEC_METASPACE) {
            int drop = i == 0 && !standalone && d->prepend != MS_NEVER;
            size_t cl = (size_t)d->ch_len, k = 0, from = 0;
            rc = dl_push(o, "", 0, 0);
            while (!rc && k + cl <= n) {
                if (memcmp(t + k, d->ch, cl)) {
                    k++;
                    continue;
                }
                rc = dl_push(o, t + from, k - from, 1);
                if (!rc && !drop)
                    rc = dl_push(o, " ", 1, 1);
                k += cl;
                from = k;
            }
            if (!rc)
                rc = dl_push(o, t + from, n - from, 1);
        } else { /* DEC_REPLACE */
            size_t certain;
            w->rr.n = 0;
            rc = dl_push(o, "", 0, 0);
            if (!rc && n)
                rc = pretok_scan(&tok->dec_re.step[d->re_step], &w->pw, t, 0, 0, n, 1, &w->rr,
                                 &certain, NULL, 0);
            for (size_t r = 0; !rc && r < w->rr.n; r++) {
                const struct pt_range *g = &w->rr.r[r];
                rc = g->match ? dl_push(o, d->rep, d->rep_len, 1)
                              : dl_push(o, t + g->start, g->end - g->start, 1);
            }
        }
    }
    return rc;
}

static int dec_work_get(const tokenizer_t *tok, struct dec_work **wp)
{
    if (!*wp) {
        *wp = rc_calloc(1, sizeof **wp);
        if (!*wp)
            return RC_ENOMEM;
    }
    struct dec_work *w = *wp;
    if (!w->pw_ready && tok->dec_re.n) {
        if (pretok_work_init(&w->pw, &tok->dec_re))
            return RC_ENOMEM;
        w->pw_ready = 1;
    }
    w->l[0].a.n = w->l[0].n = 0;
    return 0;
}

/* Run the chain over list 0 of w; append the result to out. */
static int dec_chain(const tokenizer_t *tok, struct dec_work *w, int standalone,
                     struct tok_bytes *out)
{
    int cur = 0, rc = 0;
    for (int k = 0; k < tok->n_dec && !rc; k++) {
        rc = dec_step_run(tok, w, &tok->dec[k], &w->l[cur], &w->l[cur ^ 1], standalone);
        cur ^= 1;
    }
    const struct dec_list *l = &w->l[cur];
    for (size_t i = 0; i < l->n && !rc; i++) {
        if (tok->dec_none && i > 0 && !standalone)
            rc = tok_bytes_append(out, " ", 1);
        if (!rc)
            rc = tok_bytes_append(out, l->a.p + l->sp[i].off, l->sp[i].len);
    }
    return rc == RC_ENOMEM || rc == 0 ? rc : RC_ERANGE;
}

int tok_dec_piece(const tokenizer_t *tok, struct dec_work **wp, const uint8_t *s, size_t n,
                  struct tok_bytes *out)
{
    int rc = dec_work_get(tok, wp);
    if (!rc)
        rc = dl_push(&(*wp)->l[0], s, n, 0);
    return rc ? rc : dec_chain(tok, *wp, 1, out);
}

/* The reference's decode(ids) for a text vocab (ids checked by the caller). */
static int dec_ids(const tokenizer_t *tok, struct dec_work **wp, const int32_t *ids, size_t n,
                   unsigned flags, struct tok_bytes *out)
{
    int rc = dec_work_get(tok, wp);
    for (size_t i = 0; i < n && !rc; i++) {
        int32_t id = ids[i];
        if (!(tok->id_flags[id] & TOKF_PRESENT) ||
            ((flags & TOK_DECODE_SKIP_SPECIAL) && (tok->id_flags[id] & TOKF_SPECIAL)))
            continue;
        rc = dl_push(&(*wp)->l[0], tok->raw_pool + tok->raw_off[id],
                     tok->raw_off[id + 1] - tok->raw_off[id], 0);
    }
    return rc ? rc : dec_chain(tok, *wp, 0, out);
}


static int check_id(const tokenizer_t *tok, int32_t id)
{
    return id >= 0 && id < tok->n_ids;
}

int tokenizer_decode(const tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags,
                     char **text, size_t *len, char *err, size_t errlen)
{
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!check_id(tok, ids[i]))
            return rc_fail(err, errlen, RC_EINVAL, "id %zu (%ld) is not in [0, %d)", i,
                           (long)ids[i], (int)tok->n_ids);
    }
    if (tok->raw_pool) {
        struct dec_work *w = NULL;
        struct tok_bytes out = {0};
        int rc = dec_ids(tok, &w, ids, n, flags, &out);
        if (!rc)
            rc = tok_bytes_append(&out, "", 1);
        tok_dec_work_free(w);
        if (rc) {
            tok_bytes_free(&out);
            return rc_fail(err, errlen, rc, rc == RC_ENOMEM ? "out of memory" : "decoder failed");
        }
        *text = (char *)out.p;
        *len = out.n - 1;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((flags & TOK_DECODE_SKIP_SPECIAL) && (tok->id_flags[ids[i]] & TOKF_SPECIAL))
            continue;
        total += tok->piece_off[ids[i] + 1] - tok->piece_off[ids[i]];
    }
    uint8_t *raw = rc_malloc(total ? total : 1);
    size_t cap;
    if (!raw || __builtin_mul_overflow(total, 3, &cap)) {
        rc_free(raw);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    uint8_t *out = rc_malloc(cap + 1);
    if (!out) {
        rc_free(raw);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if ((flags & TOK_DECODE_SKIP_SPECIAL) && (tok->id_flags[ids[i]] & TOKF_SPECIAL))
            continue;
        uint32_t a = tok->piece_off[ids[i]], b = tok->piece_off[ids[i] + 1];
        if (b > a)
            memcpy(raw + o, tok->piece_pool + a, b - a);
        o += b - a;
    }
    size_t used;
    size_t m = utf8_repair(raw, total, 1, out, &used);
    rc_free(raw);
    out[m] = 0;
    *text = (char *)out;
    *len = m;
    return 0;
}

struct tok_decoder {
    const tokenizer_t *tok;
    unsigned flags;
    uint8_t pend[4];
    size_t pend_n;
    struct tok_bytes in, out;
    /* Text vocab: the reference's DecodeStream (ids since the window start, the text
     * of the window's first prefix_index ids already given out). */
    struct dec_work *w;
    struct tok_ids win;
    size_t prefix_index;
    struct tok_bytes prefix, str;
};

/* A DecodeStream window holds ids while their text ends in U+FFFD (an incomplete
 * byte-fallback character). The reference holds them forever; past this many we give
 * the text out anyway, so that a step costs O(TOK_DECODER_MAX_WINDOW). */
#define TOK_DECODER_MAX_WINDOW 256

static int ends_fffd(const struct tok_bytes *b)
{
    return b->n >= 3 && !memcmp(b->p + b->n - 3, "\xEF\xBF\xBD", 3);
}

static int window_decode(tok_decoder_t *d, size_t from, struct tok_bytes *out)
{
    out->n = 0;
    return dec_ids(d->tok, &d->w, d->win.v + from, d->win.n - from, d->flags, out);
}

/* Byte-fallback ids at the end of the window that make an incomplete UTF-8 character
 * (0-3 of them). */
static size_t incomplete_tail(const tok_decoder_t *d)
{
    const tokenizer_t *tok = d->tok;
    uint8_t b[4];
    size_t m = 0;
    while (m < 4 && m < d->win.n) {
        int32_t id = d->win.v[d->win.n - 1 - m];
        int x = byte_token(tok->raw_pool + tok->raw_off[id], tok->raw_off[id + 1] - tok->raw_off[id]);
        if (x < 0)
            break;
        b[3 - m++] = (uint8_t)x;
    }
    const uint8_t *t = b + 4 - m;
    for (size_t j = m; j-- > 0;) {
        if ((t[j] & 0xC0) == 0x80)
            continue;
        size_t need = t[j] >= 0xF0 ? 4 : t[j] >= 0xE0 ? 3 : t[j] >= 0xC0 ? 2 : 1;
        return m - j < need ? m - j : 0;
    }
    return 0;
}

/* The reference's step_decode_stream, one id (flush: no id, give out the rest). */
static int stream_step(tok_decoder_t *d, int32_t id, int flush)
{
    int rc = 0;
    d->out.n = 0;
    if (d->prefix.n == 0 && d->win.n > 0) {
        if ((rc = window_decode(d, 0, &d->str)))
            return rc;
        if (!ends_fffd(&d->str)) {
            struct tok_bytes t = d->prefix;
            d->prefix = d->str;
            d->str = t;
            d->prefix_index = d->win.n;
        }
    }
    if (!flush && tok_ids_push(&d->win, id))
        return RC_ENOMEM;
    size_t use = d->win.n; /* ids whose text is given out */
    if ((rc = window_decode(d, 0, &d->str)))
        return rc;
    if (!flush && !(d->str.n > d->prefix.n && !ends_fffd(&d->str))) {
        if (d->win.n <= TOK_DECODER_MAX_WINDOW)
            return 0;
        /* Held too long: give out all but an incomplete character at the end. */
        use = d->win.n - incomplete_tail(d);
        if (use <= d->prefix_index)
            return 0;
        size_t keep = d->win.n;
        d->win.n = use;
        rc = window_decode(d, 0, &d->str);
        d->win.n = keep;
        if (rc)
            return rc;
    }
    if (d->str.n > d->prefix.n) {
        /* Where the reference raises InvalidPrefix (a later byte token made an earlier
         * byte run invalid), we give out what lies past the old prefix's length, from a
         * character start. */
        size_t from = d->prefix.n;
        while (from < d->str.n && (d->str.p[from] & 0xC0) == 0x80)
            from++;
        if (tok_bytes_append(&d->out, d->str.p + from, d->str.n - from))
            return RC_ENOMEM;
    }
    if (flush) {
        d->win.n = 0;
        d->prefix.n = 0;
        d->prefix_index = 0;
        return 0;
    }
    if (d->out.n == 0)
        return 0;
    /* The window now starts where the old prefix did; its first use - prefix_index ids
     * are the new prefix. */
    size_t pi = d->prefix_index, npi = use - pi;
    memmove(d->win.v, d->win.v + pi, (d->win.n - pi) * sizeof *d->win.v);
    d->win.n -= pi;
    size_t keep = d->win.n;
    d->win.n = npi;
    rc = window_decode(d, 0, &d->prefix);
    d->win.n = keep;
    d->prefix_index = npi;
    return rc;
}

int tok_decoder_create(const tokenizer_t *tok, unsigned flags, tok_decoder_t **out, char *err,
                       size_t errlen)
{
    *out = rc_calloc(1, sizeof **out);
    if (!*out)
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    (*out)->tok = tok;
    (*out)->flags = flags;
    return 0;
}

int tok_decoder_feed(tok_decoder_t *d, int32_t id, const char **text, size_t *len, char *err,
                     size_t errlen)
{
    const tokenizer_t *tok = d->tok;
    *text = "";
    *len = 0;
    if (!check_id(tok, id))
        return rc_fail(err, errlen, RC_EINVAL, "id %ld is not in [0, %d)", (long)id,
                       (int)tok->n_ids);
    if ((d->flags & TOK_DECODE_SKIP_SPECIAL) && (tok->id_flags[id] & TOKF_SPECIAL))
        return 0;
    if (tok->raw_pool) {
        int rc = stream_step(d, id, 0);
        if (rc)
            return rc_fail(err, errlen, rc, rc == RC_ENOMEM ? "out of memory" : "decoder failed");
        if (tok_bytes_reserve(&d->out, 1))
            return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
        d->out.p[d->out.n] = 0;
        *text = (const char *)d->out.p;
        *len = d->out.n;
        return 0;
    }
    uint32_t a = tok->piece_off[id], b = tok->piece_off[id + 1];
    d->in.n = 0;
    d->out.n = 0;
    if (tok_bytes_append(&d->in, d->pend, d->pend_n) ||
        tok_bytes_append(&d->in, tok->piece_pool + a, b - a) ||
        tok_bytes_reserve(&d->out, d->in.n * 3 + 1))
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    size_t used;
    d->out.n = utf8_repair(d->in.p, d->in.n, 0, d->out.p, &used);
    d->pend_n = d->in.n - used;
    if (d->pend_n)
        memcpy(d->pend, d->in.p + used, d->pend_n);
    d->out.p[d->out.n] = 0;
    *text = (const char *)d->out.p;
    *len = d->out.n;
    return 0;
}

int tok_decoder_flush(tok_decoder_t *d, const char **text, size_t *len)
{
    *text = "";
    *len = 0;
    if (d->tok->raw_pool) {
        int rc = d->win.n ? stream_step(d, -1, 1) : 0;
        if (!rc && d->out.n && !tok_bytes_reserve(&d->out, 1)) {
            d->out.p[d->out.n] = 0;
            *text = (const char *)d->out.p;
            *len = d->out.n;
        }
        return rc;
    }
    if (d->pend_n == 0)
        return 0;
    if (tok_bytes_reserve(&d->out, 16))
        return RC_ENOMEM;
    size_t used;
    d->out.n = utf8_repair(d->pend, d->pend_n, 1, d->out.p, &used);
    d->out.p[d->out.n] = 0;
    d->pend_n = 0;
    *text = (const char *)d->out.p;
    *len = d->out.n;
    return 0;
}

void tok_decoder_free(tok_decoder_t *d)
{
    if (!d)
        return;
    tok_bytes_free(&d->in);
    tok_bytes_free(&d->out);
    tok_dec_work_free(d->w);
    tok_ids_free(&d->win);
    tok_bytes_free(&d->prefix);
    tok_bytes_free(&d->str);
    rc_free(d);
}

/* ---- facts ------------------------------------------------------------------------------ */

int32_t tokenizer_vocab_size(const tokenizer_t *tok) { return tok->n_ids; }

int32_t tokenizer_eos_id(const tokenizer_t *tok) { return tok->eos_id; }

int32_t tokenizer_bos_id(const tokenizer_t *tok) { return tok->bos_id; }

int tokenizer_token_bytes(const tokenizer_t *tok, int32_t id, const char **bytes, size_t *len)
{
    if (!check_id(tok, id))
        return RC_EINVAL;
    *bytes = (const char *)tok->piece_pool + tok->piece_off[id];
    *len = tok->piece_off[id + 1] - tok->piece_off[id];
    return 0;
}

int tokenizer_is_special(const tokenizer_t *tok, int32_t id)
{
    return check_id(tok, id) && (tok->id_flags[id] & TOKF_SPECIAL) ? 1 : 0;
}

int32_t tokenizer_find_token(const tokenizer_t *tok, const char *s, size_t n)
{
    if (n == 0)
        return -1;
    if (tok->kind == TOK_KIND_BYTES)
        return n == 1 ? (uint8_t)s[0] : -1;
    for (size_t i = 0; i < tok->n_added; i++) {
        int32_t id = tok->added[i].id;
        uint32_t a = tok->piece_off[id], b = tok->piece_off[id + 1];
        if (b - a == n && !memcmp(tok->piece_pool + a, s, n))
            return id;
    }
    return bpe_find_word(&tok->bpe, (const uint8_t *)s, n);
}

const char *tokenizer_describe(const tokenizer_t *tok) { return tok->desc; }
