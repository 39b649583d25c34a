/*
 * tok_testlib.h — helpers shared by the tokenizer tests: fixture files (gzip or
 * plain), tokenizers by name (the committed GPT-2 and cl100k files, the shared NeoX
 * file, and the derived variants of variants.json), and the golden block hash of
 * gen_goldens.py.
 */
#ifndef RECUR_TOK_TESTLIB_H
#define RECUR_TOK_TESTLIB_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "tokenizer.h"

#define TL_DIR RECUR_FIXTURES "/tokenizer"

/* Whole file, gunzipped when the name ends in .gz; rc_malloc'ed, NUL-terminated.
 * 0 or -1 (and *data NULL). */
int tl_read(const char *path, uint8_t **data, size_t *len);

/* tokenizer.json text of a base tokenizer: "gpt2", "cl100k" (fixtures), "neox"
 * (RECUR_SHARED), "recur" (models/recur-sp, our own model's) or "llama_*" (the Llama
 * family made by gen_goldens_llama.py, fixtures llama/tokenizers.json.gz). NULL when absent, with the reason in why. rc_free the result. */
char *tl_base_json(const char *name, size_t *len, char *why, size_t whylen);

/* Load a base tokenizer, or a variant "name" from variants.json (its base with its
 * edits applied). NULL with the reason in why when the base is unavailable or loading
 * fails (*rc set to the load error, 0 when merely unavailable). */
tokenizer_t *tl_load(const char *name, int *rc, char *why, size_t whylen);

/* Names of the variants in variants.json, NULL-terminated; free with tl_free_names. */
char **tl_variant_names(void);
void tl_free_names(char **names);

/* File names in texts/, sorted, NULL-terminated; free with tl_free_names. */
char **tl_text_names(void);

/* gen_goldens.py's block hash of ids[from..to), g = global index. */
uint64_t tl_block_hash(const int32_t *ids, size_t from, size_t to);

/* zlib crc32. */
uint32_t tl_crc32(const void *p, size_t n);
/* The same, continued from an earlier crc (zlib crc32's running form). */
uint32_t tl_crc32_update(uint32_t crc, const void *p, size_t n);

/* Encode text by feeding it in chunks whose sizes come from a seeded generator
 * (max_chunk >= 1; 1 = byte by byte). Returns 0 and the ids (rc_free). */
int tl_encode_stream(const tokenizer_t *tok, const uint8_t *text, size_t len,
                     unsigned flags, size_t max_pending, uint64_t seed, size_t max_chunk,
                     int32_t **ids, size_t *n, size_t *max_held);

/* A tiny hand-made Llama/Mistral-style tokenizer.json: ids <unk> 0, <s> 1, </s> 2,
 * <0x00>..<0xFF> 3..258, the characters ▁ h e l o w r d a é (259..268), then the
 * merges ▁h ll ell ▁hell ▁hello ▁w or ▁wor ld ▁world (269..278); byte_fallback,
 * fuse_unk, TemplateProcessing "<s> $A". form 0: legacy (Prepend + Replace
 * normaliser, no pre-tokenizer, Replace/ByteFallback/Fuse/Strip decoder); 1: Metaspace
 * (pre-tokenizer and decoder, prepend_scheme scheme) with split; 2: without split. */
json_t *tl_llama_mini(int form, const char *scheme);

#endif
