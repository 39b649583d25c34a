#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "cpus.h"

#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One line of a small file into buf; 0 or -1. */
static int read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char *ok = fgets(buf, (int)len, f);
    fclose(f);
    return ok ? 0 : -1;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A strictly positive decimal integer filling the token at *s; advances s. */
static int parse_count(const char **s, long long *out)
{
    char *end;
    long long v = strtoll(*s, &end, 10);
    if (end == *s || v <= 0 || (*end && *end != ' ' && *end != '\n'))
        return -1;
    *s = end;
    *out = v;
    return 0;
}

/* The quota in CPUs set on one cgroup directory; 0 = none or unreadable. */
static double dir_quota(const char *dir, int v1)
{
    char path[4096], line[128];
    long long quota, period;
    const char *s = line;
    if (!v1) {
        if (snprintf(path, sizeof path, "%s/cpu.max", dir) >= (int)sizeof path ||
            read_line(path, line, sizeof line) != 0 || !strncmp(line, "max", 3) ||
            parse_count(&s, &quota) != 0 || *s != ' ')
            return 0;
        s++;
        if (parse_count(&s, &period) != 0)
            return 0;
    } else {
        if (snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir) >= (int)sizeof path ||
            read_line(path, line, sizeof line) != 0 || parse_count(&s, &quota) != 0)
            return 0; /* -1 (no limit) fails parse_count too */
        s = line;
        if (snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir) >= (int)sizeof path ||
            read_line(path, line, sizeof line) != 0 || parse_count(&s, &period) != 0)
            return 0;
    }
    return (double)quota / (double)period;
}

/* The tightest quota on base+cg and its ancestors up to base itself. */
static double walk_quota(const char *base, const char *cg, int v1)
{
    char dir[4096];
    double best = 0;
    int n = snprintf(dir, sizeof dir, "%s%s", base, cg);
    if (n < 0 || (size_t)n >= sizeof dir)
        return 0;
    size_t blen = strlen(base);
    for (;;) {
        /* trailing slashes off ("/" becomes the mount itself) */
        size_t len = strlen(dir);
        while (len > blen && dir[len - 1] == '/')
            dir[--len] = '\0';
        if (is_dir(dir)) {
            double q = dir_quota(dir, v1);
            if (q > 0 && (best == 0 || q < best))
                best = q;
        }
        if (len <= blen)
            return best;
        char *slash = strrchr(dir + blen, '/');
        if (!slash)
            slash = dir + blen;
        *slash = '\0';
    }
}

/* Is `name` one of the comma-separated controllers in list[0..len)? */
static int has_controller(const char *list, size_t len, const char *name)
{
    size_t nl = strlen(name);
    const char *p = list, *end = list + len;
    while (p < end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        size_t tl = c ? (size_t)(c - p) : (size_t)(end - p);
        if (tl == nl && !memcmp(p, name, nl))
            return 1;
        p += tl + 1;
    }
    return 0;
}

double cpu_quota_read(const char *cgroup_root, const char *proc_cgroup)
{
    if (!cgroup_root || !proc_cgroup)
        return 0;
    FILE *f = fopen(proc_cgroup, "r");
    if (!f)
        return 0;
    char line[4096];
    double best = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        /* "ID:CONTROLLERS:PATH"; the path may itself contain ':' */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || c2[1] != '/')
            continue;
        const char *ctl = c1 + 1, *path = c2 + 1;
        size_t ctl_len = (size_t)(c2 - ctl);
        double q = 0;
        char base[4096];
        if (ctl_len == 0 && !strncmp(line, "0:", 2)) { /* the v2 unified hierarchy */
            q = walk_quota(cgroup_root, path, 0);
        } else if (has_controller(ctl, ctl_len, "cpu")) {
            /* v1: mounted under a directory named after its controllers,
             * or under "cpu" (a symlink on most systems) */
            int n = snprintf(base, sizeof base, "%s/%.*s", cgroup_root, (int)ctl_len, ctl);
            if (n < 0 || (size_t)n >= sizeof base)
                continue;
            if (!is_dir(base))
                snprintf(base, sizeof base, "%s/cpu", cgroup_root);
            q = walk_quota(base, path, 1);
        }
        if (q > 0 && (best == 0 || q < best))
            best = q;
    }
    fclose(f);
    return best;
}

int cpu_threads_for(int affinity, double quota)
{
    int n = affinity;
    if (quota > 0) {
        double up = ceil(quota);
        if (up < n)
            n = (int)up;
    }
    if (n < 1)
        n = 1;
    if (n > CPU_MAX_THREADS)
        n = CPU_MAX_THREADS;
    return n;
}

void cpu_limits_read(const char *cgroup_root, const char *proc_cgroup, struct cpu_limits *out)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    out->online = online > 0 ? (int)online : 1;
    cpu_set_t set;
    CPU_ZERO(&set);
    /* a mask of more than CPU_SETSIZE (1024) CPUs fails here: use online */
    out->affinity = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : out->online;
    if (out->affinity < 1)
        out->affinity = out->online;
    out->quota = cpu_quota_read(cgroup_root, proc_cgroup);
    out->threads = cpu_threads_for(out->affinity, out->quota);
}

int cpu_threads_auto(void)
{
    struct cpu_limits l;
    cpu_limits_read("/sys/fs/cgroup", "/proc/self/cgroup", &l);
    return l.threads;
}
