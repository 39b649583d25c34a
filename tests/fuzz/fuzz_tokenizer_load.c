/* Fuzz target: bytes -> tokenizer.json loader. Whatever loads must also encode,
 * stream and decode a fixed text without crashing, and the streamed ids must equal
 * the one-shot ids. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char TEXT[] = "Hello world! <|endoftext|> caf\xC3\xA9 e\xCC\x81  \t\n 12345 "
                           "\xF0\x9F\x98\x80 it's \xFF\xE2\x82 end";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tokenizer_t *tok;
    char err[256];
    if (tokenizer_load_json((const char *)data, size, &tok, err, sizeof err))
        return 0;
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(tok, TEXT, sizeof TEXT - 1, 0, &ids, &n, err, sizeof err) == 0) {
        tok_encoder_t *e;
        struct tok_encoder_opts o = {0, 256};
        if (tok_encoder_create(tok, &o, &e, err, sizeof err) == 0) {
            int rc = 0;
            for (size_t i = 0; i < sizeof TEXT - 1 && !rc; i++)
                rc = tok_encoder_feed(e, TEXT + i, 1, err, sizeof err);
            if (!rc)
                rc = tok_encoder_finish(e, err, sizeof err);
            size_t k;
            const int32_t *s = tok_encoder_ids(e, &k);
            if (!rc && (k != n || (n && memcmp(s, ids, n * sizeof *ids))))
                abort(); /* streaming must equal one-shot */
            tok_encoder_free(e);
        }
        char *txt;
        size_t len;
        if (tokenizer_decode(tok, ids, n, 0, &txt, &len, err, sizeof err) == 0)
            rc_free(txt);
    }
    rc_free(ids);
    int32_t vs = tokenizer_vocab_size(tok);
    int32_t probe[4] = {0, vs - 1, vs / 2, tokenizer_eos_id(tok) < 0 ? 0 : tokenizer_eos_id(tok)};
    char *txt;
    size_t len;
    if (tokenizer_decode(tok, probe, 4, TOK_DECODE_SKIP_SPECIAL, &txt, &len, err, sizeof err) == 0)
        rc_free(txt);
    tokenizer_free(tok);
    return 0;
}
