#include "stopscan.h"

#include <string.h>

#include "utf8.h"

/* The earliest start >= from of any stop sequence in t[0..n), or n. */
static size_t earliest_match(const char *t, size_t n, size_t from, const struct stop_list *st)
{
    size_t cut = n;
    for (int i = 0; i < st->n; i++) {
        size_t L = st->len[i];
        if (n < L)
            continue;
        for (size_t p = from; p + L <= n && p < cut; p++)
            if (!memcmp(t + p, st->s[i], L)) {
                cut = p;
                break;
            }
    }
    return cut;
}

/* The longest suffix of t[from..n) that is a proper prefix of a stop
 * sequence: it may become one with the next piece. */
static size_t held_prefix(const char *t, size_t n, size_t from, const struct stop_list *st)
{
    size_t hold = 0;
    for (int i = 0; i < st->n; i++) {
        size_t L = st->len[i];
        for (size_t k = L - 1; k > hold; k--)
            if (k <= n - from && !memcmp(t + n - k, st->s[i], k)) {
                hold = k;
                break;
            }
    }
    return hold;
}

int stop_scan(const char *text, size_t n, size_t emitted, const struct stop_list *stops,
              size_t *end)
{
    size_t cut = earliest_match(text, n, emitted, stops);
    if (cut < n) {
        *end = cut;
        return 1;
    }
    size_t to = n - held_prefix(text, n, emitted, stops);
    *end = emitted + utf8_complete_prefix((const uint8_t *)text + emitted, to - emitted);
    return 0;
}
