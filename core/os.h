/*
 * os.h — the few operating-system services that the engine, the server and the
 * offline tools share, each read or drawn in exactly one place.
 *
 * Randomness comes from getrandom(2) (the kernel's CSPRNG; it blocks only
 * before the pool is first initialised, early at boot). Memory figures are of
 * this process: the current resident set from /proc/self/statm, the peak and
 * the CPU time from getrusage(2).
 */
#ifndef RECUR_OS_H
#define RECUR_OS_H

#include <stddef.h>

/* Fill buf[0..n) with random bytes. 0, or RC_EIO when the kernel gives none
 * (buf is then partly filled and must not be used). */
int os_random_bytes(void *buf, size_t n);

/* Resident set size of this process now, bytes; 0 if it cannot be read. */
size_t os_rss_bytes(void);

/* Peak resident set size of this process so far, bytes; 0 if unknown. */
size_t os_peak_rss_bytes(void);

/* User + system CPU seconds this process has used; -1 if unknown. */
double os_cpu_seconds(void);

#endif
