/*
 * store.h — files under one directory, written atomically, never outside.
 *
 * Used for named snapshots (--snapshot-dir) and spilled/persisted session
 * states (--state-dir). Every access goes through a directory fd opened
 * once: names are validated by the caller (req_snapshot_name_check), and
 * files are opened with openat(..., O_NOFOLLOW), so a name can neither
 * climb out of the directory nor follow a symlink planted inside it.
 *
 * Only regular files are ever read or removed. Anything else under a name
 * (a FIFO, a directory, a socket, a device, a symlink) counts as "not a
 * snapshot": opened with O_NONBLOCK (opening a FIFO would otherwise wait
 * for a writer, blocking the worker — and with it saves and shutdown —
 * forever), then refused by fstat; a remove leaves it alone. A write with
 * overwrite replaces it by rename (which never follows a link), except a
 * directory, which it refuses.
 *
 * Writes: a unique "<name>.<random>.tmp" is created with O_EXCL, written,
 * fsync'ed, renamed over "<name>", and the directory fsync'ed: the final
 * name holds either the old or the new bytes, never a torn file. On any
 * error the temp file is removed and the old file is untouched. Stray
 * *.tmp files (a crash mid-write) are removed by store_open.
 *
 * The functions block on disk I/O: call them from a worker (uv_queue_work),
 * never the loop thread. A store is immutable after open and may be used
 * by several workers at once.
 */
#ifndef RECUR_STORE_H
#define RECUR_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store;

/* Open (and create, mode 0700) the directory; removes stray *.tmp files.
 * Returns 0 or RC_EIO with err set. */
int store_open(const char *dir, struct store **out, char *err, size_t errlen);
void store_free(struct store *s);
const char *store_path(const struct store *s);

/* Write buf as `name` atomically. Returns 0, RC_EEXIST (overwrite = 0
 * and the name exists), RC_ENOTFILE (a directory holds the name),
 * RC_ENOSPC (disk full or over quota), RC_EIO (other I/O errors); err says
 * which. */
int store_write(struct store *s, const char *name, const void *buf, size_t len, int overwrite,
                char *err, size_t errlen);

/* Read `name` (a regular file of at most max bytes) into a new rc_malloc
 * buffer. RC_ENOENT when it does not exist (or is not a regular file),
 * RC_EFORMAT when larger than max (not a file this reader makes sense of),
 * RC_ENOMEM, RC_EIO on read errors. */
int store_read(struct store *s, const char *name, size_t max, uint8_t **buf, size_t *len,
               char *err, size_t errlen);

/* Read the first n bytes of `name` into buf (fewer if the file is
 * shorter: *got says how many). Same errors as store_read. */
int store_read_head(struct store *s, const char *name, void *buf, size_t n, size_t *got,
                    char *err, size_t errlen);

/* Remove `name`: 0, RC_ENOENT (no such file, or not a regular file: left
 * alone), RC_EIO. */
int store_remove(struct store *s, const char *name, char *err, size_t errlen);

/* Bytes an unprivileged writer may still use on the directory's file
 * system (statvfs f_bavail), and its device: 0 or RC_EIO. */
int store_space(const struct store *s, uint64_t *avail, uint64_t *dev);

struct store_entry {
    char name[200];
    uint64_t bytes;
    int64_t mtime;   /* unix seconds */
};
/* List regular files (not *.tmp, not hidden): an rc_malloc'ed array. */
int store_list(struct store *s, struct store_entry **out, size_t *n, char *err, size_t errlen);

#endif
