#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "alloc.h"
#include "errors.h"
#include "os.h"

struct store {
    int dirfd;
    char *path;
};

/* Open `name` for reading if it is a regular file: the fd, or -1 with
 * errno ENOENT for anything else there (nothing, a symlink, a FIFO, a
 * directory ...). O_NONBLOCK keeps open(2) of a FIFO from waiting for a
 * writer; fstat then refuses it. The flag is cleared again, although
 * regular files ignore it. */
static int open_regular(const struct store *s, const char *name)
{
    int fd = openat(s->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP || errno == ENOTDIR || errno == ENXIO)
            errno = ENOENT;
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = ENOENT;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

/* 1 if `name` exists as something other than a regular file. */
static int is_foreign(const struct store *s, const char *name)
{
    struct stat st;
    return fstatat(s->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode);
}

/* 1 if `name` is a directory: a write cannot rename over it. (A symlink or
 * FIFO under the name is replaced by the rename, which never follows it.) */
static int is_dir(const struct store *s, const char *name)
{
    struct stat st;
    return fstatat(s->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

int store_open(const char *dir, struct store **out, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return rc_fail(err, errlen, RC_EIO, "%s: cannot create: %s", dir, strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return rc_fail(err, errlen, RC_EIO, "%s: cannot open: %s", dir, strerror(errno));
    struct store *s = rc_calloc(1, sizeof *s);
    if (!s || !(s->path = rc_strdup(dir))) {
        rc_free(s);
        close(fd);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    s->dirfd = fd;
    /* a crash mid-write leaves only temp files: they never held a whole
     * snapshot under its name, so they go */
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && ends_with(e->d_name, ".tmp"))
            unlinkat(fd, e->d_name, 0);
    if (d)
        closedir(d);
    else if (dfd >= 0)
        close(dfd);
    *out = s;
    return 0;
}

void store_free(struct store *s)
{
    if (!s)
        return;
    close(s->dirfd);
    rc_free(s->path);
    rc_free(s);
}

const char *store_path(const struct store *s) { return s->path; }

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int store_write(struct store *s, const char *name, const void *buf, size_t len, int overwrite,
                char *err, size_t errlen)
{
    struct stat st;
    if (is_dir(s, name))
        return rc_fail(err, errlen, RC_ENOTFILE, "'%s' exists and is not a snapshot file", name);
    if (!overwrite && fstatat(s->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        return rc_fail(err, errlen, RC_EEXIST, "snapshot '%s' exists", name);
    uint64_t r = 0;
    if (os_random_bytes(&r, sizeof r) != 0)
        r = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)buf;
    char tmp[200];
    snprintf(tmp, sizeof tmp, "%s.%016llx.tmp", name, (unsigned long long)r);
    int fd = openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return rc_fail(err, errlen, RC_EIO, "creating a file in %s: %s", s->path,
                       strerror(errno));
    int e = write_all(fd, buf, len);
    if (!e && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && ((!overwrite && fstatat(s->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) ||
               is_dir(s, name)))
        e = EEXIST; /* lost a race with another writer of the same name */
    if (!e && renameat(s->dirfd, tmp, s->dirfd, name) != 0)
        e = errno;
    if (e) {
        unlinkat(s->dirfd, tmp, 0);
        if (e == EEXIST)
            return rc_fail(err, errlen, RC_EEXIST, "snapshot '%s' exists", name);
        return rc_fail(err, errlen, e == ENOSPC || e == EDQUOT ? RC_ENOSPC : RC_EIO,
                       "writing snapshot '%s' in %s: %s", name, s->path,
                       strerror(e));
    }
    fsync(s->dirfd); /* make the rename itself durable */
    return 0;
}

int store_read(struct store *s, const char *name, size_t max, uint8_t **buf, size_t *len,
               char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    int fd = open_regular(s, name);
    if (fd < 0) {
        if (errno == ENOENT)
            return rc_fail(err, errlen, RC_ENOENT, "no snapshot '%s'", name);
        return rc_fail(err, errlen, RC_EIO, "opening snapshot '%s': %s", name, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return rc_fail(err, errlen, RC_EIO, "reading snapshot '%s': %s", name, strerror(errno));
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return rc_fail(err, errlen, RC_EFORMAT, "snapshot '%s' is %lld bytes, more than %zu", name,
                       (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *b = rc_malloc(n ? n : 1);
    if (!b) {
        close(fd);
        return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        rc_free(b);
        return rc_fail(err, errlen, RC_EIO, "reading snapshot '%s' failed", name);
    }
    *buf = b;
    *len = n;
    return 0;
}

int store_read_head(struct store *s, const char *name, void *buf, size_t n, size_t *got,
                    char *err, size_t errlen)
{
    *got = 0;
    int fd = open_regular(s, name);
    if (fd < 0)
        return rc_fail(err, errlen, RC_ENOENT, "no regular file '%s'", name);
    while (*got < n) {
        ssize_t r = read(fd, (char *)buf + *got, n - *got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        *got += (size_t)r;
    }
    close(fd);
    return 0;
}

int store_space(const struct store *s, uint64_t *avail, uint64_t *dev)
{
    struct statvfs v;
    struct stat st;
    if (fstatvfs(s->dirfd, &v) != 0 || fstat(s->dirfd, &st) != 0)
        return RC_EIO;
    *avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
    *dev = (uint64_t)st.st_dev;
    return 0;
}

int store_remove(struct store *s, const char *name, char *err, size_t errlen)
{
    if (is_foreign(s, name)) /* never ours: left alone */
        return rc_fail(err, errlen, RC_ENOENT, "no snapshot '%s'", name);
    if (unlinkat(s->dirfd, name, 0) != 0) {
        if (errno == ENOENT)
            return rc_fail(err, errlen, RC_ENOENT, "no snapshot '%s'", name);
        return rc_fail(err, errlen, RC_EIO, "removing snapshot '%s': %s", name, strerror(errno));
    }
    return 0;
}

int store_list(struct store *s, struct store_entry **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    int dfd = dup(s->dirfd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        return rc_fail(err, errlen, RC_EIO, "listing %s: %s", s->path, strerror(errno));
    }
    rewinddir(d);
    size_t cap = 0, cnt = 0;
    struct store_entry *v = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (e->d_name[0] == '.' || ends_with(e->d_name, ".tmp") ||
            strlen(e->d_name) >= sizeof v->name ||
            fstatat(s->dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (cnt == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct store_entry *nv = rc_realloc(v, nc * sizeof *nv);
            if (!nv) {
                rc_free(v);
                closedir(d);
                return rc_fail(err, errlen, RC_ENOMEM, "out of memory");
            }
            v = nv;
            cap = nc;
        }
        snprintf(v[cnt].name, sizeof v[cnt].name, "%s", e->d_name);
        v[cnt].bytes = (uint64_t)st.st_size;
        v[cnt].mtime = (int64_t)st.st_mtime;
        cnt++;
    }
    closedir(d);
    *out = v;
    *n = cnt;
    return 0;
}
