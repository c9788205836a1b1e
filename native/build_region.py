"""`native._region`, the cffi (API mode) extension over native/limiter/region.c, as the build
backend builds it (setup.py's `cffi_modules`; cffi compiles it against Python's limited API).

In API mode the compiler checks the declarations below against region.h, and the extension
checks the layout of each complete struct when first used: a drift cannot go unseen.
"""

from __future__ import annotations

from cffi import FFI

# Relative to the project's root, where the build backend runs: setuptools refuses absolute paths.
LIMITER = "native/limiter"

CDEF = """
#define GPULET_REGION_MAGIC ...
#define GPULET_REGION_VERSION ...
#define GPULET_MAX_DEVICES ...
#define GPULET_MAX_SLOTS ...
#define GPULET_UUID_LEN ...
#define GPULET_COMM_LEN ...
#define GPULET_ERR_LEN ...
#define GPULET_MAX_PROBLEMS ...
#define GPULET_READ_LOCK_NS ...

struct gpulet_limit {
    char uuid[64];
    uint64_t memory_bytes;
    uint32_t core_percent;
    uint32_t flags;
};
struct gpulet_limits {
    uint32_t count;
    uint32_t pad;
    struct gpulet_limit dev[16];
};

struct gpulet_device_shared {
    char uuid[64];
    uint64_t memory_bytes;
    uint32_t core_percent;
    uint32_t util_permille;
    uint64_t util_stamp_ns;
    uint64_t pace_ns;
    uint64_t throttled_ns;
    uint64_t launches;
    uint64_t busy_ns;
    uint32_t share_pad;
    uint32_t share_permille;
    uint64_t share_stamp_ns;
    uint64_t reserved[2];
};
struct gpulet_slot {
    int32_t pid;
    uint32_t flags;
    uint64_t attached_ns;
    uint64_t used[16];
    char comm[16];
};
struct gpulet_region {
    uint64_t magic;
    uint32_t version;
    uint32_t size;
    uint32_t devices;
    uint32_t slots;
    union {
        char pad[64]; /* the mutex, opaque to Python */
    } lock;
    uint64_t generation;
    struct gpulet_device_shared dev[16];
    struct gpulet_slot slot[256];
};
struct gpulet_handle {
    int fd;
    int slot;
    struct gpulet_region *region;
};

struct gpulet_proc_usage {
    int32_t pid;
    int32_t slot;
    char comm[16];
    uint64_t used[16];
};
struct gpulet_snapshot {
    uint32_t devices;
    uint32_t procs;
    uint64_t generation;
    struct gpulet_device_shared dev[16];
    uint64_t used[16];
    struct gpulet_proc_usage proc[256];
};
struct gpulet_inspection {
    int32_t readable;
    uint32_t problems;
    struct gpulet_snapshot usage;
    char problem[32][256];
};

int gpulet_limits_parse(const char *text, size_t len, struct gpulet_limits *out, char *err,
                        size_t errlen);
int gpulet_limits_read(const char *path, struct gpulet_limits *out, char *err, size_t errlen);
int gpulet_limits_format(const struct gpulet_limits *l, char *buf, size_t buflen);

uint64_t gpulet_now_ns(void);
int gpulet_region_create(const char *path, const struct gpulet_limits *l, char *err,
                         size_t errlen);
int gpulet_region_open(const char *path, struct gpulet_handle *h, char *err, size_t errlen);
int gpulet_region_private(const struct gpulet_limits *l, struct gpulet_handle *h, char *err,
                          size_t errlen);
void gpulet_region_close(struct gpulet_handle *h);
int gpulet_region_matches(const struct gpulet_handle *h, const struct gpulet_limits *l,
                          char *err, size_t errlen);
int gpulet_region_lock(struct gpulet_handle *h);
int gpulet_region_lock_within(struct gpulet_handle *h, uint64_t timeout_ns);
void gpulet_region_unlock(struct gpulet_handle *h);
int gpulet_region_attach(struct gpulet_handle *h, int32_t pid, const char *comm, char *err,
                         size_t errlen);
int gpulet_region_detach(struct gpulet_handle *h);
int gpulet_region_reap(struct gpulet_handle *h);
int gpulet_region_reserve(struct gpulet_handle *h, uint32_t dev, uint64_t bytes, uint64_t cap,
                          uint64_t *used_after);
void gpulet_region_release(struct gpulet_handle *h, uint32_t dev, uint64_t bytes);
uint64_t gpulet_region_used(struct gpulet_handle *h, uint32_t dev);
int gpulet_region_set_feedback(struct gpulet_handle *h, uint32_t dev, uint32_t util_permille,
                               uint64_t stamp_ns);
int gpulet_region_snapshot(struct gpulet_handle *h, struct gpulet_snapshot *out);
int gpulet_region_inspect(const char *path, const struct gpulet_limits *expected,
                          struct gpulet_inspection *out);
int gpulet_region_write_feedback(const char *path, const struct gpulet_limits *expected,
                                 uint32_t dev, uint32_t util_permille, uint64_t stamp_ns,
                                 char *err, size_t errlen);
#define GPULET_NO_FEEDBACK ...
#define GPULET_LIMIT_BATCH ...
int gpulet_region_write_share(const char *path, const struct gpulet_limits *expected,
                              uint32_t dev, uint32_t share_permille, uint64_t stamp_ns,
                              char *err, size_t errlen);
int gpulet_region_inspect_feedback(const char *path, const struct gpulet_limits *expected,
                                   const uint32_t *util_permille, uint64_t stamp_ns,
                                   struct gpulet_inspection *out, int *fed_back, char *err,
                                   size_t errlen);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "native._region",
    '#include "region.h"',
    sources=[f"{LIMITER}/region.c"],
    include_dirs=[LIMITER],
    extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-O2"],
)
