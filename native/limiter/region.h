/*
 * The shared accounting region of one container, and its limits.
 *
 * A container's directory (GPULET_REGION_DIR, default /run/gpulet) holds two files:
 *
 *   limits   text, written by the agent and mounted read-only: what the container may use.
 *   region   binary, mapped shared by every limited process of the container and by the
 *            agent: who is charged what, the compute pacing clock, the agent's feedback.
 *
 * Both formats are in docs/limiter.md. Every function here is plain memory and file work:
 * none calls the CUDA driver, so the region lock is never held across a driver call.
 * Functions that can fail return 0 or a negative errno and, when `err` is not NULL, leave
 * one line naming the problem in it.
 */
#ifndef GPULET_REGION_H
#define GPULET_REGION_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define GPULET_REGION_MAGIC 0x314e4f4947455247ULL /* "GREGION1", little-endian */
#define GPULET_REGION_VERSION 1u
#define GPULET_MAX_DEVICES 16
#define GPULET_MAX_SLOTS 256
#define GPULET_UUID_LEN 64 /* "GPU-8b0b9d22-...": 40 characters and the NUL fit */
#define GPULET_COMM_LEN 16
#define GPULET_ERR_LEN 256

/* ---- limits -------------------------------------------------------------------------- */

struct gpulet_limit {
    char uuid[GPULET_UUID_LEN];
    uint64_t memory_bytes; /* the cap; a whole number of MiB */
    uint32_t core_percent; /* 1..100; 100 = not throttled */
    uint32_t flags;        /* GPULET_LIMIT_BATCH */
};

/* A batch slice's device: paced to the share the agent writes in the region (its core_percent
 * is the floor when that share is missing or stale). Written as a fifth word, "batch". */
#define GPULET_LIMIT_BATCH 1u

struct gpulet_limits {
    uint32_t count;
    uint32_t pad;
    struct gpulet_limit dev[GPULET_MAX_DEVICES];
};

/* Parse the text of a limits file. Refuses (-EINVAL) anything but the documented format. */
int gpulet_limits_parse(const char *text, size_t len, struct gpulet_limits *out, char *err,
                        size_t errlen);
/* Read and parse a limits file (at most 64 KiB). */
int gpulet_limits_read(const char *path, struct gpulet_limits *out, char *err, size_t errlen);
/* Write `l` in the documented format into buf; returns the length, or -ENOSPC. */
int gpulet_limits_format(const struct gpulet_limits *l, char *buf, size_t buflen);

/* ---- the region ---------------------------------------------------------------------- */

/* Per device, shared. Fields changed after creation are updated with __atomic builtins. */
struct gpulet_device_shared {
    char uuid[GPULET_UUID_LEN];
    uint64_t memory_bytes;  /* the cap, copied from the limits at creation (for readers) */
    uint32_t core_percent;  /* likewise */
    uint32_t util_permille; /* agent feedback: the container's measured utilisation, 0..1000 */
    uint64_t util_stamp_ns; /* gpulet_now_ns() when that was written; 0: never */
    uint64_t pace_ns;       /* compute pacing clock: when the container's next launch may start */
    uint64_t throttled_ns;  /* total time launches were held back */
    uint64_t launches;      /* launches paced */
    uint64_t busy_ns;       /* GPU time measured for paced launches */
    uint32_t share_pad;
    uint32_t share_permille; /* agent: a batch device's current compute share, 0..1000 */
    uint64_t share_stamp_ns; /* gpulet_now_ns() when that was written; 0: never */
    uint64_t reserved[2];
};

/* Per process. A slot is live while its process holds an OFD write lock on the slot's first
 * byte in the region file: the kernel drops it when the process dies, in any namespace. */
struct gpulet_slot {
    int32_t pid; /* in the container's PID namespace; 0: free */
    uint32_t flags;
    uint64_t attached_ns;
    uint64_t used[GPULET_MAX_DEVICES]; /* bytes charged, per device */
    char comm[GPULET_COMM_LEN];
};

struct gpulet_region {
    uint64_t magic;
    uint32_t version;
    uint32_t size; /* sizeof(struct gpulet_region): the file is exactly this long */
    uint32_t devices;
    uint32_t slots;
    union {
        pthread_mutex_t mutex; /* process-shared, robust */
        char pad[64];
    } lock;
    uint64_t generation; /* bumped on every attach, detach and reap */
    struct gpulet_device_shared dev[GPULET_MAX_DEVICES];
    struct gpulet_slot slot[GPULET_MAX_SLOTS];
};

struct gpulet_handle {
    int fd;
    int slot; /* -1 while not attached */
    struct gpulet_region *region;
};

/* Monotonic clock, ns (CLOCK_MONOTONIC: one clock for the host and its containers). */
uint64_t gpulet_now_ns(void);

/* Create (or replace, atomically: temporary file and rename) the region at `path` for these
 * limits; mode 0666 so that any user in the container can attach. */
int gpulet_region_create(const char *path, const struct gpulet_limits *l, char *err,
                         size_t errlen);
/* Map an existing region; checks magic, version, size and the file's length. */
int gpulet_region_open(const char *path, struct gpulet_handle *h, char *err, size_t errlen);
/* A private, anonymous region for these limits: the limiter's fallback when the shared one
 * cannot be used (limits still hold, per process). */
int gpulet_region_private(const struct gpulet_limits *l, struct gpulet_handle *h, char *err,
                          size_t errlen);
/* Detach if attached, unmap, close. Safe on a zeroed or closed handle. */
void gpulet_region_close(struct gpulet_handle *h);
/* Check that the region serves exactly the devices of `l`, in order. */
int gpulet_region_matches(const struct gpulet_handle *h, const struct gpulet_limits *l, char *err,
                          size_t errlen);

/* The region lock, for callers that need several steps to be one (and for tests). When its
 * last holder died holding it, takes it over, makes it consistent and reaps. */
int gpulet_region_lock(struct gpulet_handle *h);
/* The same, waiting at most `timeout_ns` (CLOCK_REALTIME underneath: a clock step shortens or
 * stretches the wait): -ETIMEDOUT when the lock was not released in time. The readers
 * (snapshot, used) wait GPULET_READ_LOCK_NS, so a lock word a process of the container
 * scribbled on cannot hold them for ever. */
int gpulet_region_lock_within(struct gpulet_handle *h, uint64_t timeout_ns);
void gpulet_region_unlock(struct gpulet_handle *h);
#define GPULET_READ_LOCK_NS 1000000000ull

/* Take a slot for this process (reaping dead ones when full); -ENOSPC when none is free. */
int gpulet_region_attach(struct gpulet_handle *h, int32_t pid, const char *comm, char *err,
                         size_t errlen);
/* Give back everything this process is charged and free its slot. */
int gpulet_region_detach(struct gpulet_handle *h);
/* Free the slots of dead processes and their charges; returns how many, or -errno. */
int gpulet_region_reap(struct gpulet_handle *h);

/* Charge `bytes` on device `dev` to this process's slot if the container's total stays
 * within `cap`; -ENOMEM (nothing charged) otherwise, after reaping dead processes once.
 * `used_after`, if not NULL, receives the container's total. */
int gpulet_region_reserve(struct gpulet_handle *h, uint32_t dev, uint64_t bytes, uint64_t cap,
                          uint64_t *used_after);
/* Give back `bytes` on `dev` from this process's slot; never below zero. */
void gpulet_region_release(struct gpulet_handle *h, uint32_t dev, uint64_t bytes);
/* The container's total charge on `dev` (live slots). */
uint64_t gpulet_region_used(struct gpulet_handle *h, uint32_t dev);

/* The agent's utilisation feedback for `dev` (< the region's devices, at most 16). */
int gpulet_region_set_feedback(struct gpulet_handle *h, uint32_t dev, uint32_t util_permille,
                               uint64_t stamp_ns);

/* A consistent copy for readers (the agent, `gpulet limiter usage`). */
struct gpulet_proc_usage {
    int32_t pid;
    int32_t slot;
    char comm[GPULET_COMM_LEN];
    uint64_t used[GPULET_MAX_DEVICES];
};

struct gpulet_snapshot {
    uint32_t devices;
    uint32_t procs;
    uint64_t generation;
    struct gpulet_device_shared dev[GPULET_MAX_DEVICES];
    uint64_t used[GPULET_MAX_DEVICES]; /* container totals */
    struct gpulet_proc_usage proc[GPULET_MAX_SLOTS];
};

/* Takes the lock (waiting at most GPULET_READ_LOCK_NS); devices clamped to 16. */
int gpulet_region_snapshot(struct gpulet_handle *h, struct gpulet_snapshot *out);

/* ---- the agent's reader: a region as untrusted input ---------------------------------- */

/* The region file and its directory are writable by the container, whose processes may be
 * root there: for the agent (root on the host) everything in and about the file is input
 * to check, not state to trust. These two never map the file (a truncation cannot SIGBUS
 * them), never take its lock (a scribbled mutex cannot block them, nor steer their robust
 * list), and never open anything but a regular file of exactly sizeof(struct gpulet_region)
 * bytes: the path is opened O_PATH | O_NOFOLLOW, checked with fstat, and reopened through
 * /proc/self/fd with O_NONBLOCK, so a symlink is never followed, a FIFO, socket or device
 * node is never opened for I/O, and a lease cannot block the open. docs/limiter.md,
 * "How the agent reads a region". */

#define GPULET_MAX_PROBLEMS 32

struct gpulet_inspection {
    int32_t readable;  /* 1: `usage` holds what the file says, clamped; 0: nothing was read */
    uint32_t problems; /* problems found; the first GPULET_MAX_PROBLEMS are in `problem` */
    struct gpulet_snapshot usage;
    char problem[GPULET_MAX_PROBLEMS][GPULET_ERR_LEN]; /* one line each, naming the field */
};

/* Read the region at `path` into `out`, checking it against `expected` (the limits the agent
 * granted; NULL: only the region's own consistency). With `expected`, `usage` has exactly
 * its devices, with its uuids and caps; without, the region's (at most 16). Totals are the
 * saturating sums over the slots whose owner is alive (its liveness lock held), the ones
 * listed in `usage.proc`. Returns 0 when the file was read (`out->readable`), else a
 * negative errno with problem[0] saying why. Never blocks on anything the container
 * controls; takes about 50 us. */
int gpulet_region_inspect(const char *path, const struct gpulet_limits *expected,
                          struct gpulet_inspection *out);

/* The agent's utilisation feedback for device `dev` of `expected` (dev < expected->count,
 * whatever the region's `devices` says), written with one pwrite of `util_permille` and
 * `util_stamp_ns` after the same checks as gpulet_region_inspect and of the magic and
 * version. */
int gpulet_region_write_feedback(const char *path, const struct gpulet_limits *expected,
                                 uint32_t dev, uint32_t util_permille, uint64_t stamp_ns,
                                 char *err, size_t errlen);

/* The agent's current compute share for device `dev` of a batch slice (`expected` marks it
 * GPULET_LIMIT_BATCH; -EINVAL otherwise), 0..1000 permille, written as the feedback is: one
 * pwrite of `share_permille` and `share_stamp_ns`, after the same checks. */
int gpulet_region_write_share(const char *path, const struct gpulet_limits *expected,
                              uint32_t dev, uint32_t share_permille, uint64_t stamp_ns,
                              char *err, size_t errlen);

/* Both in one, for the agent's every-second pass: the region is opened once (for reading
 * and writing when there is feedback to write), inspected as gpulet_region_inspect does,
 * and then, only when that found it readable and without a problem, given the feedback:
 * for each device d < expected->count whose util_permille[d] is not GPULET_NO_FEEDBACK,
 * the one pwrite gpulet_region_write_feedback makes, to the file just inspected.
 * `util_permille` has expected->count entries (NULL: no feedback; it needs `expected`),
 * each checked (0..1000) before anything is opened. A region that cannot be opened for
 * writing but can for reading (a read lease, a read-only file) is still inspected. Returns
 * what gpulet_region_inspect returns and leaves `out` as it does; *fed_back (when not NULL)
 * is 0 when everything asked for was written (or nothing was), else a negative errno with
 * one line in err: the open's or the write's, or -EBADMSG when the inspection found
 * problems (nothing written). */
#define GPULET_NO_FEEDBACK 0xffffffffu
int gpulet_region_inspect_feedback(const char *path, const struct gpulet_limits *expected,
                                   const uint32_t *util_permille, uint64_t stamp_ns,
                                   struct gpulet_inspection *out, int *fed_back, char *err,
                                   size_t errlen);

#endif
