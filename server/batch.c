#include "batch.h"

int batch_prefill_chunk(const struct batch_limits *lim, const struct batch_want *w)
{
    if (w->input_left == 0)
        return 0;
    if (w->input_left >= (size_t)lim->prefill_chunk)
        return lim->prefill_chunk;
    return w->input_eof ? (int)w->input_left : 0; /* wait for a whole chunk */
}

int batch_plan(const struct batch_limits *lim, const struct batch_want *want, int n,
               struct batch_take *take)
{
    int budget = lim->batch_tokens, rows = 0;
    for (int i = 0; i < n; i++)
        take[i] = (struct batch_take){0, 0};
    for (int i = 0; i < n && budget > 0 && rows < lim->max_decode_rows; i++) {
        int k = want[i].decode_rows;
        if (k > budget)
            k = budget;
        if (k > lim->max_decode_rows - rows)
            k = lim->max_decode_rows - rows;
        take[i].decode_rows = k;
        rows += k;
        budget -= k;
    }
    for (int i = 0; i < n && budget > 0; i++) {
        int c = batch_prefill_chunk(lim, &want[i]);
        if (c == 0 || c > budget)
            continue; /* next tick, whole */
        take[i].prefill = c;
        budget -= c;
    }
    return lim->batch_tokens - budget;
}
