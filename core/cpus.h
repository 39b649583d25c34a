/*
 * cpus.h — how many CPUs this process may really use, for `--threads 0`.
 *
 * The number of online CPUs is the wrong answer in two common places: under
 * `taskset`/`cpuset` (the affinity mask allows fewer), and in a container
 * with a CPU limit (a Kubernetes pod limited to 2 CPUs on a 64-core node
 * sees 64 CPUs but gets 2 CPUs' worth of time per period; 64 threads then
 * spend most of each period throttled). So the automatic thread count is
 * the smaller of the affinity mask's size and the cgroup CPU quota, rounded
 * up (1.5 CPUs of time keep 2 threads busy part of the time).
 *
 * The quota is the tightest of the process's cgroup and its ancestors:
 *   cgroup v2  <root>/<path>/cpu.max            "QUOTA PERIOD" or "max PERIOD"
 *   cgroup v1  <root>/<cpu,...>/<path>/cpu.cfs_quota_us / cpu.cfs_period_us
 *              (quota -1 = none)
 * where <path> comes from /proc/self/cgroup. Directories of the path that
 * do not exist under the mount are skipped, so a cgroup namespace (the
 * process sees "/", or a path the mount does not show) falls back to the
 * mount's root, which is then the process's own cgroup.
 *
 * Nothing here allocates; unreadable or malformed files count as no limit.
 */
#ifndef RECUR_CPUS_H
#define RECUR_CPUS_H

/* The pool's hard cap (pool.c): more threads than this never help a
 * forward pass of the models we run. */
#define CPU_MAX_THREADS 64

struct cpu_limits {
    int online;     /* CPUs online (sysconf) */
    int affinity;   /* CPUs in this thread's affinity mask (sched_getaffinity) */
    double quota;   /* cgroup CPU quota in CPUs, 0 = none found */
    int threads;    /* cpu_threads_for(affinity, quota) */
};

/* The CPU quota, in CPUs, of the process whose /proc/PID/cgroup is the file
 * proc_cgroup, with cgroups mounted at cgroup_root (v2: the unified mount;
 * v1: the directory holding one directory per controller mount). 0 when
 * there is none or it cannot be read. Either argument NULL: 0. */
double cpu_quota_read(const char *cgroup_root, const char *proc_cgroup);

/* min(affinity, ceil(quota)) when quota > 0, else affinity; clamped to
 * [1, CPU_MAX_THREADS]. */
int cpu_threads_for(int affinity, double quota);

/* All of the above for this process, with the cgroup files under
 * cgroup_root and proc_cgroup (normally "/sys/fs/cgroup" and
 * "/proc/self/cgroup"). */
void cpu_limits_read(const char *cgroup_root, const char *proc_cgroup, struct cpu_limits *out);

/* The automatic thread count for this process (the real paths). */
int cpu_threads_auto(void);

#endif
