/*
 * pretok.h — the text stages in front of BPE: normalisers, added-token matching,
 * pre-tokenizer regexes and split behaviours. Internal to core/tokenizer*.c.
 *
 * Each piece mirrors one part of Hugging Face `tokenizers` (the reference):
 *   - normalisers NFC / NFKC / NFD / NFKD and sequences of them, via libutf8proc,
 *     applied chunk by chunk between "normalisation boundaries" (before a starter that
 *     no earlier character can combine with), so text can be normalised as it streams;
 *   - a byte trie over added tokens with leftmost-longest matching (the reference
 *     uses an Aho-Corasick automaton with MatchKind::LeftmostLongest: same matches);
 *   - pre-tokenizer regexes compiled with PCRE2 (UTF + UCP, JIT). The reference uses
 *     Oniguruma (Ruby syntax); pretok_regex_compile() rewrites the few constructs whose
 *     meaning differs (\s \S \h \H \w \W, ^/$ always multi-line, the m flag) so both
 *     engines match the same text;
 *   - the split behaviours Removed / Isolated / MergedWithPrevious / MergedWithNext /
 *     Contiguous, with invert, exactly as the reference folds them.
 * Everything here is immutable after loading except the *_work_t scratch structs,
 * which belong to one thread.
 */
#ifndef RECUR_PRETOK_H
#define RECUR_PRETOK_H

#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* A growable byte buffer (rc_malloc'ed). */
struct tok_bytes {
    uint8_t *p;
    size_t n, cap;
};
int tok_bytes_reserve(struct tok_bytes *b, size_t extra); /* 0 or RC_ENOMEM */
int tok_bytes_append(struct tok_bytes *b, const void *s, size_t n);
void tok_bytes_drop_front(struct tok_bytes *b, size_t n); /* remove the first n bytes */
void tok_bytes_free(struct tok_bytes *b);

/* ---- character classes (the reference's, not PCRE2's) ---------------------- */

/* White_Space (Rust regex \s, used by added-token lstrip/rstrip). */
int pretok_is_space(uint32_t cp);
/* Rust regex \w: Alphabetic, marks, decimal digits, connector punctuation, joiners
 * (added-token single_word). */
int pretok_is_word(uint32_t cp);

/* ---- normalisers ----------------------------------------------------------- */

enum norm_form { NORM_NFC = 1, NORM_NFKC, NORM_NFD, NORM_NFKD };
#define NORM_MAX_STEPS 8

struct norm {
    int n;                         /* 0 = no normaliser */
    uint8_t form[NORM_MAX_STEPS];  /* applied in order */
    int compat, compose;           /* any K form / any C form: boundaries must allow for it */
};

struct norm_work {
    int32_t *u;  /* code point scratch */
    size_t cap;
    struct tok_bytes tmp[2];
};
void norm_work_free(struct norm_work *w);

/* Append the normalisation of s[0..n) (well-formed UTF-8) to out. n == 0 is fine.
 * 0 or RC_ENOMEM. */
int norm_append(const struct norm *nm, struct norm_work *w, const uint8_t *s, size_t n,
                struct tok_bytes *out);

/* Largest p <= n, at a character boundary, such that the normalisation of s[0..p)
 * cannot change whatever follows: the start of the last character before which
 * nothing can combine. 0 when there is none. */
size_t norm_stable_len(const struct norm *nm, const uint8_t *s, size_t n);

/* The whole normaliser: a sequence of steps, each a run of Unicode forms (struct
 * norm), Prepend (a string put in front of a non-empty segment: the text between two
 * added tokens) or Replace (every leftmost, non-overlapping occurrence of a literal
 * string). Streaming runs each step over its own held text (struct nstep_state). */
enum nstep_kind { NS_NF = 1, NS_PREPEND, NS_REPLACE };
struct nstep {
    int kind;
    struct norm nf;      /* NS_NF */
    uint8_t *a;          /* NS_PREPEND: the prefix; NS_REPLACE: the pattern (non-empty) */
    size_t a_len;
    uint8_t *b;          /* NS_REPLACE: the replacement */
    size_t b_len;
};
struct normalizer {
    int n;               /* 0: no normaliser */
    struct nstep step[NORM_MAX_STEPS];
    int compat, compose; /* over all NF steps, for describe() */
};
void normalizer_free(struct normalizer *nz);

/* One step's streaming state within a segment: held input and whether Prepend has
 * put its prefix out yet. Zero-initialise; nstep_state_free() at the end. */
struct nstep_state {
    struct tok_bytes held;
    int prefixed;
};
void nstep_state_free(struct nstep_state *s);

/* Feed s[0..n) (well-formed UTF-8) to step k; append what can no longer change to
 * out. final: the segment ends here (flush, and start the next segment fresh).
 * cap: an NF step holding more than cap bytes without a boundary releases all but
 * the last character (an endless run of combining marks). 0 or RC_ENOMEM. */
int nstep_feed(const struct nstep *st, struct nstep_state *ss, struct norm_work *w,
               const uint8_t *s, size_t n, int final, size_t cap, struct tok_bytes *out);

/* The whole normaliser over one segment s[0..n), appended to out. 0 or RC_ENOMEM. */
int normalizer_apply(const struct normalizer *nz, struct norm_work *w, const uint8_t *s,
                     size_t n, struct tok_bytes *out);

/* ---- added-token trie ------------------------------------------------------- */

struct trie_node;
struct trie {
    struct trie_node *node;
    size_t n_nodes, cap_nodes;
    int32_t root[256];  /* child of the root per first byte, -1 if none */
    size_t max_len;     /* longest pattern, bytes */
    size_t n_patterns;
};

void trie_init(struct trie *t);
void trie_free(struct trie *t);
/* Add pattern s[0..n) (n >= 1) with value v. RC_EFORMAT if the same pattern is
 * already present (the reference refuses to build such an automaton), RC_ENOMEM. */
int trie_add(struct trie *t, const uint8_t *s, size_t n, int32_t v);

enum { TRIE_NONE = 0, TRIE_FOUND = 1, TRIE_LIVE = 2 };
/* Leftmost-longest match in s[from..n). TRIE_FOUND: *ms, *me, *val set. TRIE_NONE:
 * no match. With final == 0, TRIE_LIVE and *ms = the first start position whose
 * match could still appear or grow with more text (nothing before it can). */
int trie_find(const struct trie *t, const uint8_t *s, size_t n, size_t from, int final,
              size_t *ms, size_t *me, int32_t *val);

/* ---- pre-tokenizer steps --------------------------------------------------- */

/* PT_WHOLE: no pre-tokenizer (the piece is one word). PT_METASPACE: spaces become
 * the replacement character, which may be prepended to a piece (see tokenizer.c);
 * with split, re is the literal replacement and behavior MergedWithNext. */
enum pt_kind { PT_SPLIT = 1, PT_BYTELEVEL, PT_WHOLE, PT_METASPACE };
enum { MS_ALWAYS = 1, MS_FIRST, MS_NEVER };
enum split_behavior { SB_REMOVED = 1, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };
#define PT_MAX_STEPS 8

struct pt_step {
    int kind;
    int behavior;         /* PT_SPLIT */
    int invert;           /* PT_SPLIT */
    int add_prefix_space; /* PT_BYTELEVEL */
    int use_regex;        /* PT_BYTELEVEL: split with the GPT-2 pattern first */
    uint8_t rep[4];       /* PT_METASPACE: the replacement character's UTF-8 */
    int rep_len;
    int prepend;          /* PT_METASPACE: MS_* */
    int split;            /* PT_METASPACE */
    pcre2_code *re;       /* NULL for ByteLevel without regex */
    uint32_t lookbehind;  /* characters of left context the pattern may inspect */
};

struct pretok {
    int n;
    struct pt_step step[PT_MAX_STEPS];
    pcre2_general_context *gctx; /* routes PCRE2 allocations through rc_malloc */
};

/* Compile a pattern written for Oniguruma (Ruby syntax) into PCRE2 (UTF, UCP, JIT for
 * complete and hard-partial matching). literal != 0 matches the string as is.
 * 0, RC_EUNSUPPORTED (a construct whose meaning would differ, or a pattern that can
 * match the empty string) or RC_EFORMAT (does not compile) with err set. */
int pretok_regex_compile(struct pretok *pt, const char *pattern, size_t len, int literal,
                         struct pt_step *step, char *err, size_t errlen);
/* The ByteLevel pre-tokenizer's built-in GPT-2 pattern. */
extern const char PRETOK_GPT2_PATTERN[];
void pretok_free(struct pretok *pt);

struct pretok_work {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
};
int pretok_work_init(struct pretok_work *w, const struct pretok *pt); /* 0 or RC_ENOMEM */
void pretok_work_free(struct pretok_work *w);

/* A range of a piece, and whether the pattern matched it. */
struct pt_range {
    size_t start, end;
    int match;
};
struct pt_ranges {
    struct pt_range *r;
    size_t n, cap;
};
void pt_ranges_free(struct pt_ranges *r);

/* Match step->re over s[from..n); s[ctx0..from) may be inspected as left context
 * (ctx0 = where the piece starts in s). Appends to out the ranges covering
 * [from, *certain): with final != 0, *certain = n; otherwise the ranges stop at the
 * end of the last match that more text cannot change. 0, or RC_ERANGE / RC_EFORMAT
 * when PCRE2 gives up (match or JIT stack limit), err set. */
int pretok_scan(const struct pt_step *step, struct pretok_work *w, const uint8_t *s, size_t ctx0,
                size_t from, size_t n, int final, struct pt_ranges *out, size_t *certain,
                char *err, size_t errlen);

/* Fold ranges into pieces by behaviour (invert flips the match flags first), as the
 * reference does. Removed ranges are not output. more != 0 means further ranges may
 * follow the last one: pieces that a following range could still extend are not
 * output, and *consumed is where the first of them starts (else the end of the last
 * range). Appends pieces (match field unused) to out. */
int pretok_fold(const struct pt_range *r, size_t n, int behavior, int invert, int more,
                struct pt_ranges *out, size_t *consumed);

#endif
