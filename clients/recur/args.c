/* args.c — a small long-option parser shared by the commands. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recur.h"

void argp_init(struct argp *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    a->argc = argc;
    a->argv = argv;
    a->i = 1;
    a->cmd = argv[0];
}

int argp_next(struct argp *a)
{
    if (a->i >= a->argc)
        return -1;
    a->arg = a->argv[a->i++];
    a->inline_val = NULL;
    a->val = NULL;
    if (!strcmp(a->arg, "--")) { /* everything after is positional */
        if (a->i >= a->argc)
            return -1;
        a->arg = a->argv[a->i++];
        return 0;
    }
    if (a->arg[0] == '-' && a->arg[1] == '-' && a->arg[2]) {
        char *eq = strchr(a->arg, '=');
        if (eq)
            a->inline_val = eq + 1;
        return 1;
    }
    if (a->arg[0] == '-' && a->arg[1] && a->arg[1] != '-' && !a->arg[2])
        return 1; /* -h, -n, -m */
    return 0;
}

int argp_is(struct argp *a, const char *name, int takes_value)
{
    size_t n = strlen(name);
    if (strncmp(a->arg, name, n) || (a->arg[n] && a->arg[n] != '='))
        return 0;
    if (!takes_value) {
        if (a->inline_val) {
            msg("%s: %s takes no value", a->cmd, name);
            a->bad = 1;
        }
        return 1;
    }
    if (a->inline_val) {
        a->val = a->inline_val;
    } else if (a->i < a->argc) {
        a->val = a->argv[a->i++];
    } else {
        msg("%s: %s needs a value", a->cmd, name);
        a->bad = 1;
        a->val = NULL;
    }
    return 1;
}

int argp_conn(struct argp *a, struct conn *c)
{
    if (argp_is(a, "--url", 1)) {
        if (a->val)
            c->url = a->val;
        return 1;
    }
    if (argp_is(a, "--api-key", 1)) {
        if (a->val)
            c->key = *a->val ? a->val : NULL;
        return 1;
    }
    if (argp_is(a, "--retry-deadline", 1)) {
        if (a->val && parse_double(a->val, 0, 1e6, &c->retry_deadline)) {
            msg("%s: --retry-deadline wants seconds in [0, 1e6], not '%s'", a->cmd, a->val);
            a->bad = 1;
        }
        return 1;
    }
    if (argp_is(a, "--timeout", 1)) {
        if (a->val && parse_double(a->val, 0.1, 1e6, &c->timeout)) {
            msg("%s: --timeout wants seconds in [0.1, 1e6], not '%s'", a->cmd, a->val);
            a->bad = 1;
        }
        return 1;
    }
    return 0;
}

int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int parse_ll(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long mul = 1;
    long long v = strtoll(s, &end, 10);
    if (end != s && *end && !end[1]) { /* K/M/G suffixes, powers of 1024 */
        switch (*end) {
        case 'K': case 'k': mul = 1024; end++; break;
        case 'M': case 'm': mul = 1024 * 1024; end++; break;
        case 'G': case 'g': mul = 1024LL * 1024 * 1024; end++; break;
        default: break;
        }
    }
    if (!*s || end == s || *end || errno || v > hi / mul || v < lo / (mul ? mul : 1))
        return -1;
    v *= mul;
    if (v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}
