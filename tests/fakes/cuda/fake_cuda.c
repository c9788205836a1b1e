/*
 * fake_cuda.c: a stand-in for NVIDIA's CUDA driver library libcuda.so.1, so that the
 * LD_PRELOAD limiter (native/limiter) can be tested without a GPU. tests/fakes/cuda builds
 * it as libcuda.so.1 (soname libcuda.so.1); a test points LD_LIBRARY_PATH at its directory
 * and runs tests/fakes/cuda/cuda_client.c, which dlopens "libcuda.so.1" like real programs.
 *
 * Configuration: the environment variable GPULET_FAKE_CUDA, read at the first cuInit(0):
 * comma-separated key=value pairs, decimal numbers, all optional:
 *   devices=N        number of GPUs, 1..16 (default 1)
 *   total_mib=M      memory of each GPU in MiB, >= 1 (default 16384)
 *   granularity=B    bytes, 1..2^40; every allocation's reserved size is rounded up to a
 *                    multiple of it, and cuMemCreate sizes must be multiples of it (default
 *                    2097152, what cuMemAlloc reserves in on many GPUs; 1: exact sizes, as
 *                    when small allocations are packed; larger: a large VMM granularity)
 *   graph_us=U       how long one cuGraphLaunch keeps the GPU busy, in µs (default 500)
 *   timeline=PATH    the devices' timelines and memory are shared by every process
 *                    configured with this PATH (a file, created when missing): a kernel
 *                    starts when the work of all of them queued before it is done, and an
 *                    allocation fails with CUDA_ERROR_OUT_OF_MEMORY when it does not fit
 *                    in what all of them hold, as on one real GPU shared by containers.
 *                    A process's memory counts while it lives (not once it has exited,
 *                    reaped or not). Without it each process has a GPU of its own.
 *   capturing=0|1    1: every stream is being captured into a graph (global mode), so
 *                    cuStreamIsCapturing says ACTIVE, launches run nothing, and
 *                    cuEventQuery from a thread in global capture mode fails with
 *                    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT and invalidates the capture, as in
 *                    the real driver: every launch after fails with
 *                    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
 * A malformed value makes cuInit return CUDA_ERROR_UNKNOWN (and every later call
 * CUDA_ERROR_NOT_INITIALIZED) after one line on stderr: "fake_cuda: GPULET_FAKE_CUDA: ...".
 *
 * Devices: ordinal i (CUdevice == ordinal), name "gpulet fake GPU", UUID bytes
 *   {0xfa,0x4e,0,0, 0,0, 0x40,0, 0x80,0, 0,0,0,0,0,i}, which NVML and nvidia-smi print as
 *   GPU-fa4e0000-0000-4000-8000-0000000000NN   (NN = i in two lower-case hex digits).
 * One primary context per device; the current context is per thread (cuCtxSetCurrent).
 *
 * Memory: each device has total = total_mib MiB; every allocation reserves its size rounded
 * up to the granularity on one device (the current context's, unless the call names one:
 * cuMemCreate's prop->location.id, a memory pool's device). An allocation that does not fit
 * fails with CUDA_ERROR_OUT_OF_MEMORY and reserves nothing. Device pointers are unique,
 * non-zero, granularity-aligned and never reused in a process. Unknown pointers and
 * handles: CUDA_ERROR_INVALID_VALUE. Managed memory counts against the current device.
 * cuMemAllocPitch: pitch = WidthInBytes rounded up to 512, size = pitch * Height
 * (ElementSizeBytes must be 4, 8 or 16, as in the real driver).
 *
 * Time: each device has one timeline. A kernel launch keeps it busy for gridDimX µs, a
 * graph launch for graph_us µs: start = max(now, busy_until), busy_until = start + length.
 * Synchronising (context, stream, event) sleeps until the work is done. Streams are not
 * tracked: every stream of a device shares its timeline. An event records
 * max(now, busy_until) of the current device and is complete from then on;
 * cuEventElapsedTime on a never-recorded event is CUDA_ERROR_INVALID_HANDLE (as in the real
 * driver), on one not yet complete CUDA_ERROR_NOT_READY.
 *
 * cuGetProcAddress(_v2) maps a base name, the caller's CUDA version and the flags to the
 * exported function the way the real driver does (see PROCS below); the pointers it returns
 * are the exported symbols' own addresses, so they equal what dlsym(handle, "name") gives
 * even when an LD_PRELOADed library defines the same names.
 *
 * Fake-only exports for tests: gpuletFakeBusyNs and gpuletFakeStats (at the end).
 * Thread-safe: one global mutex; no call sleeps while holding it.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cuda_api.h"

/* ---- what cuda_api.h lacks ----------------------------------------------------------- */

typedef struct CUgraph_st *CUgraph;
typedef int CUmemAllocationGranularity_flags;
#define FAKE_CUDA_ERROR_INVALID_DEVICE 101
#define FAKE_DRIVER_VERSION 13000
#define FAKE_MAX_DEVICES 16
#define FAKE_PITCH_ALIGNMENT 512u
#define FAKE_VA_START 0x200000000ULL /* first device pointer: 8 GiB */
#define FAKE_HANDLE_START 0x10000ULL

struct CUctx_st {
    int dev;
};
struct CUmemPoolHandle_st {
    int dev;
};

#define EXPORT __attribute__((visibility("default")))
/* A hidden alias of an exported function: its address binds inside this library even when
 * a preloaded library defines the same name (the glibc hidden_def pattern). */
#define LOCAL(fn) extern __typeof__(fn) local_##fn __attribute__((alias(#fn), visibility("hidden")))

/* ---- state --------------------------------------------------------------------------- */

struct device {
    uint64_t total, used;   /* bytes */
    uint64_t busy_until;    /* CLOCK_MONOTONIC ns */
    uint64_t busy_assigned; /* ns of work ever queued */
    uint64_t launches;
    int ctx_refs;
};

enum kind {
    K_MEM = 1,   /* cuMemAlloc, cuMemAllocPitch, cuMemAllocManaged */
    K_ASYNC = 2, /* cuMemAllocAsync, cuMemAllocFromPoolAsync */
    K_VMM = 4,   /* cuMemCreate */
    K_ARRAY = 8,
    K_EVENT = 16,
    K_GRAPH = 32,
    K_EXEC = 64,
};

struct object {
    enum kind kind;
    int dev;
    uint64_t id;   /* device pointer or handle value */
    uint64_t size; /* bytes reserved on dev */
    uint64_t when; /* K_EVENT: recorded time */
    int recorded;  /* K_EVENT */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_state; /* 0: no cuInit yet, 1: initialised, -1: cuInit failed */
static CUresult init_result;
static struct {
    int devices;
    uint64_t total_mib, granularity, graph_us, capturing;
    char timeline[256];
} cfg;
/* timeline=PATH: shared with the other processes configured with it, the file
 * `struct shared`: when every device's queued work ends, and each live process's memory
 * (`SHARED_PROCS` slots, one per process, taken at cuInit and from processes gone). */
#define SHARED_PROCS 64
struct shared_proc {
    int32_t pid; /* 0: free */
    uint32_t pad;
    uint64_t used[FAKE_MAX_DEVICES]; /* bytes, this process's devs[].used */
};
struct shared {
    uint64_t until[FAKE_MAX_DEVICES];
    struct shared_proc procs[SHARED_PROCS];
};
static uint64_t *shared_until;
static struct shared *shared;
static struct shared_proc *me;
static struct device devs[FAKE_MAX_DEVICES];
static struct CUctx_st ctxs[FAKE_MAX_DEVICES];
static struct CUmemPoolHandle_st pools[FAKE_MAX_DEVICES];
static struct object *objs;
static size_t nobjs, capobjs;
static uint64_t next_va = FAKE_VA_START;
static uint64_t next_handle = FAKE_HANDLE_START;
static _Thread_local int cur_dev = -1;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {
        .tv_sec = (time_t)(t / 1000000000ULL),
        .tv_nsec = (long)(t % 1000000000ULL),
    };
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Locks and checks cuInit; every `enter()` is paired with `leave()`. */
static CUresult enter(void) {
    pthread_mutex_lock(&lock);
    return init_state == 1 ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

static CUresult leave(CUresult r) {
    pthread_mutex_unlock(&lock);
    return r;
}

/* CUDA_ERROR_INVALID_VALUE, or CUDA_ERROR_NOT_INITIALIZED before cuInit. */
static CUresult invalid(void) {
    CUresult r = enter();
    return leave(r ? r : CUDA_ERROR_INVALID_VALUE);
}

static CUresult check_dev(CUdevice dev) {
    return dev >= 0 && dev < cfg.devices ? CUDA_SUCCESS : FAKE_CUDA_ERROR_INVALID_DEVICE;
}

static CUresult current(int *dev) {
    if (cur_dev < 0 || cur_dev >= cfg.devices)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = cur_dev;
    return CUDA_SUCCESS;
}

static struct object *find(uint64_t id, int kinds) {
    for (size_t i = 0; i < nobjs; i++)
        if (objs[i].id == id && (objs[i].kind & kinds))
            return &objs[i];
    return NULL;
}

static struct object *add(enum kind kind, int dev, uint64_t size) {
    if (nobjs == capobjs) {
        size_t cap = capobjs ? capobjs * 2 : 64;
        struct object *grown = realloc(objs, cap * sizeof *grown);
        if (!grown)
            return NULL;
        objs = grown;
        capobjs = cap;
    }
    struct object *o = &objs[nobjs++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->dev = dev;
    o->size = size;
    if (kind & (K_MEM | K_ASYNC)) {
        uint64_t g = cfg.granularity;
        o->id = (next_va + g - 1) / g * g;
        next_va = o->id + size + g; /* a gap: neighbours never touch */
    } else {
        o->id = next_handle;
        next_handle += 16;
    }
    return o;
}

/* Whether process `pid` still holds GPU memory: it exists and has not exited (a zombie's
 * memory is freed, as a real driver frees it when the process exits). */
static int holds_memory(int32_t pid) {
    if (pid <= 0 || (kill(pid, 0) != 0 && errno != EPERM))
        return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *close = strrchr(buf, ')');
    return !(close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X'));
}

/* Bytes the other processes sharing the timeline hold on `dev` (0 without one). */
static uint64_t others_used(int dev) {
    uint64_t sum = 0;
    for (int i = 0; shared && i < SHARED_PROCS; i++) {
        struct shared_proc *p = &shared->procs[i];
        int32_t pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
        if (p != me && holds_memory(pid))
            sum += __atomic_load_n(&p->used[dev], __ATOMIC_RELAXED);
    }
    return sum;
}

/* This process's use of `dev`, for the others to see. */
static void publish_used(int dev) {
    if (me)
        __atomic_store_n(&me->used[dev], devs[dev].used, __ATOMIC_RELEASE);
}

static void drop(struct object *o) {
    devs[o->dev].used -= o->size;
    publish_used(o->dev);
    *o = objs[--nobjs];
}

/* Reserves `bytes` rounded up to the granularity on `dev`, as a new object of `kind`. */
static CUresult reserve(enum kind kind, int dev, uint64_t bytes, uint64_t *id) {
    uint64_t g = cfg.granularity;
    if (bytes == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (bytes > UINT64_MAX - (g - 1))
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t rounded = (bytes + g - 1) / g * g;
    struct device *d = &devs[dev];
    uint64_t others = others_used(dev);
    if (others > d->total - d->used || rounded > d->total - d->used - others)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct object *o = add(kind, dev, rounded);
    if (!o)
        return CUDA_ERROR_OUT_OF_MEMORY;
    d->used += rounded;
    publish_used(dev);
    *id = o->id;
    return CUDA_SUCCESS;
}

static CUresult release(uint64_t id, int kinds) {
    struct object *o = find(id, kinds);
    if (!o)
        return CUDA_ERROR_INVALID_VALUE;
    drop(o);
    return CUDA_SUCCESS;
}

/* Queues `ns` of work on the current device's timeline. */
#define FAKE_CAPTURE_IMPLICIT 906 /* CUDA_ERROR_STREAM_CAPTURE_IMPLICIT */
#define FAKE_CAPTURE_INVALIDATED 901 /* CUDA_ERROR_STREAM_CAPTURE_INVALIDATED */
static __thread int capture_mode; /* CU_STREAM_CAPTURE_MODE_GLOBAL = 0, RELAXED = 2 */
static int capture_invalidated;

static CUresult busy(uint64_t ns) {
    if (cfg.capturing && __atomic_load_n(&capture_invalidated, __ATOMIC_RELAXED))
        return FAKE_CAPTURE_INVALIDATED;
    if (cfg.capturing)
        ns = 0; /* captured into a graph, not run */
    int dev;
    CUresult r = current(&dev);
    if (r)
        return r;
    struct device *d = &devs[dev];
    if (shared_until) {
        /* One timeline for every process: start after all work queued so far. This
         * process's own busy_until is where its last work ends (what its syncs wait for). */
        uint64_t *t = &shared_until[dev], old = __atomic_load_n(t, __ATOMIC_ACQUIRE), next;
        do
            next = max_u64(now_ns(), old) + ns;
        while (!__atomic_compare_exchange_n(t, &old, next, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
        d->busy_until = next;
    } else {
        d->busy_until = max_u64(now_ns(), d->busy_until) + ns;
    }
    d->busy_assigned += ns;
    d->launches++;
    return CUDA_SUCCESS;
}

/* Sleeps until the current device's timeline is idle. */
static CUresult sync_current(void) {
    int dev;
    CUresult r = enter();
    if (!r)
        r = current(&dev);
    uint64_t until = r ? 0 : devs[dev].busy_until;
    leave(r);
    if (!r)
        sleep_until(until);
    return r;
}

/* ---- configuration ------------------------------------------------------------------- */

static int config_error(const char *fmt, const char *what) {
    fprintf(stderr, "fake_cuda: GPULET_FAKE_CUDA: ");
    fprintf(stderr, fmt, what);
    fputc('\n', stderr);
    return -1;
}

static int parse_config(const char *text) {
    cfg.devices = 1;
    cfg.total_mib = 16384;
    cfg.granularity = 2097152;
    cfg.graph_us = 500;
    cfg.capturing = 0;
    cfg.timeline[0] = '\0';
    if (!text || !*text)
        return 0;
    char buf[512];
    if (strlen(text) >= sizeof buf)
        return config_error("%s", "longer than 511 characters");
    strcpy(buf, text);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            return config_error("expected key=value, not \"%s\"", item);
        *eq = '\0';
        const char *value = eq + 1;
        if (strcmp(item, "timeline") == 0) {
            if (!*value || strlen(value) >= sizeof cfg.timeline)
                return config_error("%s needs a path of 1..255 bytes", item);
            strcpy(cfg.timeline, value);
            continue;
        }
        char *end;
        errno = 0;
        unsigned long long n = strtoull(value, &end, 10);
        if (value[0] < '0' || value[0] > '9' || *end || errno)
            return config_error("%s needs a decimal number", item);
        if (strcmp(item, "devices") == 0) {
            if (n < 1 || n > FAKE_MAX_DEVICES)
                return config_error("%s must be 1..16", item);
            cfg.devices = (int)n;
        } else if (strcmp(item, "total_mib") == 0) {
            if (n < 1 || n > (1ULL << 30))
                return config_error("%s must be 1..2^30", item);
            cfg.total_mib = n;
        } else if (strcmp(item, "granularity") == 0) {
            if (n < 1 || n > (1ULL << 40))
                return config_error("%s must be 1..2^40", item);
            cfg.granularity = n;
        } else if (strcmp(item, "graph_us") == 0) {
            if (n > 3600ULL * 1000000ULL)
                return config_error("%s must be at most an hour", item);
            cfg.graph_us = n;
        } else if (strcmp(item, "capturing") == 0) {
            if (n > 1)
                return config_error("%s must be 0 or 1", item);
            cfg.capturing = n;
        } else {
            return config_error("unknown key \"%s\"", item);
        }
    }
    return 0;
}

/* Maps the shared timeline file (timeline=PATH), creating it zeroed when missing. */
static int open_timeline(void) {
    if (!cfg.timeline[0])
        return 0;
    size_t size = sizeof(struct shared);
    int fd = open(cfg.timeline, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0)
            close(fd);
        return config_error("timeline %s cannot be opened", cfg.timeline);
    }
    void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return config_error("timeline %s cannot be mapped", cfg.timeline);
    shared = map;
    shared_until = shared->until;
    /* A slot of its own: a free one, or one whose process is gone. */
    int32_t self = (int32_t)getpid();
    for (int i = 0; i < SHARED_PROCS && !me; i++) {
        struct shared_proc *p = &shared->procs[i];
        int32_t pid = __atomic_load_n(&p->pid, __ATOMIC_ACQUIRE);
        if ((pid == 0 || !holds_memory(pid)) &&
            __atomic_compare_exchange_n(&p->pid, &pid, self, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            for (int d = 0; d < FAKE_MAX_DEVICES; d++)
                __atomic_store_n(&p->used[d], 0, __ATOMIC_RELEASE);
            me = p;
        }
    }
    if (!me)
        return config_error("timeline %s has no free process slot", cfg.timeline);
    return 0;
}

/* ---- initialisation, devices, contexts ----------------------------------------------- */

EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    if (init_state == 0) {
        if (parse_config(getenv("GPULET_FAKE_CUDA")) != 0 || open_timeline() != 0) {
            init_state = -1;
            init_result = CUDA_ERROR_UNKNOWN;
        } else {
            for (int i = 0; i < cfg.devices; i++) {
                devs[i].total = cfg.total_mib << 20;
                ctxs[i].dev = i;
                pools[i].dev = i;
            }
            init_state = 1;
            init_result = CUDA_SUCCESS;
        }
    }
    return leave(init_result);
}
LOCAL(cuInit);

EXPORT CUresult cuDriverGetVersion(int *version) {
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = FAKE_DRIVER_VERSION;
    return CUDA_SUCCESS;
}
LOCAL(cuDriverGetVersion);

EXPORT CUresult cuDeviceGetCount(int *count) {
    CUresult r = enter();
    if (!r && !count)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        *count = cfg.devices;
    return leave(r);
}
LOCAL(cuDeviceGetCount);

EXPORT CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult r = enter();
    if (!r && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(ordinal);
    if (!r)
        *device = ordinal;
    return leave(r);
}
LOCAL(cuDeviceGet);

static CUresult device_uuid(CUuuid *uuid, CUdevice dev) {
    CUresult r = enter();
    if (!r && !uuid)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r) {
        static const unsigned char base[16] = {0xfa, 0x4e, 0, 0, 0, 0, 0x40, 0, 0x80, 0};
        memcpy(uuid->bytes, base, sizeof base);
        uuid->bytes[15] = (char)dev;
    }
    return leave(r);
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return device_uuid(uuid, dev); }
LOCAL(cuDeviceGetUuid);

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { return device_uuid(uuid, dev); }
LOCAL(cuDeviceGetUuid_v2);

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult r = enter();
    if (!r && (!name || len <= 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r)
        snprintf(name, (size_t)len, "gpulet fake GPU");
    return leave(r);
}
LOCAL(cuDeviceGetName);

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CUresult r = enter();
    if (!r && !bytes)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r)
        *bytes = devs[dev].total;
    return leave(r);
}
LOCAL(cuDeviceTotalMem_v2);

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    CUresult r = enter();
    if (!r && !pctx)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r) {
        devs[dev].ctx_refs++;
        *pctx = &ctxs[dev];
    }
    return leave(r);
}
LOCAL(cuDevicePrimaryCtxRetain);

EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
    CUresult r = enter();
    if (!r)
        r = check_dev(dev);
    if (!r && devs[dev].ctx_refs == 0)
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (!r)
        devs[dev].ctx_refs--;
    return leave(r);
}
LOCAL(cuDevicePrimaryCtxRelease);

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    CUresult r = enter();
    if (!r) {
        int found = ctx == NULL ? -1 : -2;
        for (int i = 0; i < cfg.devices && found == -2; i++)
            if (ctx == &ctxs[i])
                found = i;
        if (found == -2)
            r = CUDA_ERROR_INVALID_CONTEXT;
        else
            cur_dev = found;
    }
    return leave(r);
}
LOCAL(cuCtxSetCurrent);

EXPORT CUresult cuCtxGetCurrent(CUcontext *pctx) {
    CUresult r = enter();
    if (!r && !pctx)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        *pctx = cur_dev < 0 ? NULL : &ctxs[cur_dev];
    return leave(r);
}
LOCAL(cuCtxGetCurrent);

EXPORT CUresult cuCtxGetDevice(CUdevice *device) {
    int dev = 0;
    CUresult r = enter();
    if (!r && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = current(&dev);
    if (!r)
        *device = dev;
    return leave(r);
}
LOCAL(cuCtxGetDevice);

EXPORT CUresult cuCtxSynchronize(void) { return sync_current(); }
LOCAL(cuCtxSynchronize);

EXPORT CUresult cuStreamSynchronize(CUstream stream) {
    (void)stream;
    return sync_current();
}
LOCAL(cuStreamSynchronize);

EXPORT CUresult cuStreamSynchronize_ptsz(CUstream stream) {
    (void)stream;
    return sync_current();
}
LOCAL(cuStreamSynchronize_ptsz);

/* ---- stream capture (see `capturing`) ----------------------------------------------- */

EXPORT CUresult cuStreamIsCapturing(CUstream stream, int *status) {
    (void)stream;
    if (!status)
        return CUDA_ERROR_INVALID_VALUE;
    *status = cfg.capturing ? 1 : 0; /* CU_STREAM_CAPTURE_STATUS_ACTIVE : _NONE */
    return CUDA_SUCCESS;
}
LOCAL(cuStreamIsCapturing);

EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream stream, int *status) {
    return local_cuStreamIsCapturing(stream, status);
}
LOCAL(cuStreamIsCapturing_ptsz);

EXPORT CUresult cuThreadExchangeStreamCaptureMode(int *mode) {
    if (!mode || (*mode != 0 && *mode != 1 && *mode != 2))
        return CUDA_ERROR_INVALID_VALUE;
    int old = capture_mode;
    capture_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
LOCAL(cuThreadExchangeStreamCaptureMode);

/* ---- errors -------------------------------------------------------------------------- */

static const struct {
    CUresult code;
    const char *name, *text;
} ERRORS[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {FAKE_CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static CUresult error_text(CUresult error, const char **out, int name) {
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < sizeof ERRORS / sizeof ERRORS[0]; i++)
        if (ERRORS[i].code == error) {
            *out = name ? ERRORS[i].name : ERRORS[i].text;
            return CUDA_SUCCESS;
        }
    *out = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char **str) {
    return error_text(error, str, 0);
}
LOCAL(cuGetErrorString);

EXPORT CUresult cuGetErrorName(CUresult error, const char **str) {
    return error_text(error, str, 1);
}
LOCAL(cuGetErrorName);

/* ---- memory -------------------------------------------------------------------------- */

/* Allocates on the current device. */
static CUresult alloc_current(CUdeviceptr *dptr, uint64_t bytes, enum kind kind) {
    int dev = 0;
    uint64_t id = 0;
    CUresult r = enter();
    if (!r && !dptr)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = current(&dev);
    if (!r)
        r = reserve(kind, dev, bytes, &id);
    if (!r)
        *dptr = id;
    return leave(r);
}

static CUresult free_ptr(CUdeviceptr dptr) {
    CUresult r = enter();
    if (!r)
        r = release(dptr, K_MEM | K_ASYNC);
    return leave(r);
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    return alloc_current(dptr, bytesize, K_MEM);
}
LOCAL(cuMemAlloc_v2);

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) { return free_ptr(dptr); }
LOCAL(cuMemFree_v2);

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                   unsigned int element_bytes) {
    if (!pitch || width == 0 || height == 0 || width > SIZE_MAX / 2 ||
        (element_bytes != 4 && element_bytes != 8 && element_bytes != 16))
        return invalid();
    size_t p = (width + FAKE_PITCH_ALIGNMENT - 1) / FAKE_PITCH_ALIGNMENT * FAKE_PITCH_ALIGNMENT;
    size_t bytes = SIZE_MAX; /* an overflowing size is simply too large */
    if (__builtin_mul_overflow(p, height, &bytes))
        bytes = SIZE_MAX;
    CUresult r = alloc_current(dptr, bytes, K_MEM);
    if (!r)
        *pitch = p;
    return r;
}
LOCAL(cuMemAllocPitch_v2);

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    (void)flags;
    return alloc_current(dptr, bytesize, K_MEM);
}
LOCAL(cuMemAllocManaged);

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    (void)stream;
    return alloc_current(dptr, bytesize, K_ASYNC);
}
LOCAL(cuMemAllocAsync);

EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    (void)stream;
    return alloc_current(dptr, bytesize, K_ASYNC);
}
LOCAL(cuMemAllocAsync_ptsz);

static CUresult alloc_from_pool(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool) {
    uint64_t id = 0;
    CUresult r = enter();
    int dev = -1;
    for (int i = 0; !r && i < cfg.devices; i++)
        if (pool == &pools[i])
            dev = i;
    if (!r && (!dptr || dev < 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = reserve(K_ASYNC, dev, bytesize, &id);
    if (!r)
        *dptr = id;
    return leave(r);
}

EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                        CUstream stream) {
    (void)stream;
    return alloc_from_pool(dptr, bytesize, pool);
}
LOCAL(cuMemAllocFromPoolAsync);

EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                             CUmemoryPool pool, CUstream stream) {
    (void)stream;
    return alloc_from_pool(dptr, bytesize, pool);
}
LOCAL(cuMemAllocFromPoolAsync_ptsz);

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
    (void)stream;
    return free_ptr(dptr);
}
LOCAL(cuMemFreeAsync);

EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
    (void)stream;
    return free_ptr(dptr);
}
LOCAL(cuMemFreeAsync_ptsz);

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice dev) {
    CUresult r = enter();
    if (!r && !pool)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r)
        *pool = &pools[dev];
    return leave(r);
}
LOCAL(cuDeviceGetDefaultMemPool);

static CUresult check_prop(const CUmemAllocationProp *prop) {
    if (!prop || prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    return check_dev(prop->location.id);
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                            const CUmemAllocationProp *prop, unsigned long long flags) {
    uint64_t id = 0;
    CUresult r = enter();
    if (!r && (!handle || flags != 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_prop(prop);
    if (!r && (size == 0 || size % cfg.granularity != 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = reserve(K_VMM, prop->location.id, size, &id);
    if (!r)
        *handle = id;
    return leave(r);
}
LOCAL(cuMemCreate);

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    CUresult r = enter();
    if (!r)
        r = release(handle, K_VMM);
    return leave(r);
}
LOCAL(cuMemRelease);

EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                              CUmemAllocationGranularity_flags option) {
    CUresult r = enter();
    if (!r && (!granularity || (option != 0 && option != 1)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_prop(prop);
    if (!r)
        *granularity = cfg.granularity;
    return leave(r);
}
LOCAL(cuMemGetAllocationGranularity);

EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    int dev = 0;
    CUresult r = enter();
    if (!r && (!free_bytes || !total_bytes))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = current(&dev);
    if (!r) {
        uint64_t held = devs[dev].used + others_used(dev);
        *free_bytes = held < devs[dev].total ? devs[dev].total - held : 0;
        *total_bytes = devs[dev].total;
    }
    return leave(r);
}
LOCAL(cuMemGetInfo_v2);

EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *base, size_t *size, CUdeviceptr dptr) {
    CUresult r = enter();
    const struct object *hit = NULL;
    for (size_t i = 0; !r && i < nobjs && !hit; i++)
        if ((objs[i].kind & (K_MEM | K_ASYNC)) && dptr >= objs[i].id &&
            dptr - objs[i].id < objs[i].size)
            hit = &objs[i];
    if (!r && !hit)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r && base)
        *base = hit->id;
    if (!r && size)
        *size = hit->size;
    return leave(r);
}
LOCAL(cuMemGetAddressRange_v2);

/* ---- arrays -------------------------------------------------------------------------- */

static uint64_t format_bytes(int format) {
    switch (format) {
    case 0x01:
    case 0x08:
        return 1;
    case 0x02:
    case 0x09:
    case 0x10:
        return 2;
    default: /* 0x03, 0x0a, 0x20 and the rest */
        return 4;
    }
}

static CUresult array_create(CUarray *handle, size_t width, size_t height, size_t depth,
                             int format, unsigned int channels) {
    int dev = 0;
    uint64_t id = 0, bytes = 0;
    CUresult r = enter();
    if (!r && (!handle || width == 0 || channels == 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r && (__builtin_mul_overflow((uint64_t)width, height ? height : 1, &bytes) ||
               __builtin_mul_overflow(bytes, depth ? depth : 1, &bytes) ||
               __builtin_mul_overflow(bytes, (uint64_t)channels * format_bytes(format), &bytes)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (!r)
        r = current(&dev);
    if (!r)
        r = reserve(K_ARRAY, dev, bytes, &id);
    if (!r)
        *handle = (CUarray)(uintptr_t)id;
    return leave(r);
}

EXPORT CUresult cuArrayCreate_v2(CUarray *handle, const CUDA_ARRAY_DESCRIPTOR *desc) {
    if (!desc)
        return invalid();
    return array_create(handle, desc->Width, desc->Height, 1, desc->Format, desc->NumChannels);
}
LOCAL(cuArrayCreate_v2);

EXPORT CUresult cuArray3DCreate_v2(CUarray *handle, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    if (!desc)
        return invalid();
    return array_create(handle, desc->Width, desc->Height, desc->Depth, desc->Format,
                        desc->NumChannels);
}
LOCAL(cuArray3DCreate_v2);

EXPORT CUresult cuArrayDestroy(CUarray array) {
    CUresult r = enter();
    if (!r)
        r = release((uint64_t)(uintptr_t)array, K_ARRAY);
    return leave(r);
}
LOCAL(cuArrayDestroy);

EXPORT CUresult cuArrayGetMemoryRequirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, CUarray array,
                                             CUdevice dev) {
    CUresult r = enter();
    const struct object *o = r ? NULL : find((uint64_t)(uintptr_t)array, K_ARRAY);
    if (!r && (!req || !o))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r) {
        memset(req, 0, sizeof *req);
        req->size = o->size;
        req->alignment = cfg.granularity;
    }
    return leave(r);
}
LOCAL(cuArrayGetMemoryRequirements);

/* ---- launches and graphs ------------------------------------------------------------- */

static CUresult kernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                       unsigned int bx, unsigned int by, unsigned int bz) {
    CUresult r = enter();
    if (!r && (!f || !gx || !gy || !gz || !bx || !by || !bz))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = busy((uint64_t)gx * 1000ULL);
    return leave(r);
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, CUstream stream, void **params, void **extra) {
    (void)shared, (void)stream, (void)params, (void)extra;
    return kernel(f, gx, gy, gz, bx, by, bz);
}
LOCAL(cuLaunchKernel);

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                    unsigned int gz, unsigned int bx, unsigned int by,
                                    unsigned int bz, unsigned int shared, CUstream stream,
                                    void **params, void **extra) {
    (void)shared, (void)stream, (void)params, (void)extra;
    return kernel(f, gx, gy, gz, bx, by, bz);
}
LOCAL(cuLaunchKernel_ptsz);

static CUresult kernel_ex(const CUlaunchConfig *config, CUfunction f) {
    if (!config)
        return invalid();
    return kernel(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
                  config->blockDimY, config->blockDimZ);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                                 void **extra) {
    (void)params, (void)extra;
    return kernel_ex(config, f);
}
LOCAL(cuLaunchKernelEx);

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                                      void **extra) {
    (void)params, (void)extra;
    return kernel_ex(config, f);
}
LOCAL(cuLaunchKernelEx_ptsz);

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                          unsigned int gz, unsigned int bx, unsigned int by,
                                          unsigned int bz, unsigned int shared, CUstream stream,
                                          void **params) {
    (void)shared, (void)stream, (void)params;
    return kernel(f, gx, gy, gz, bx, by, bz);
}
LOCAL(cuLaunchCooperativeKernel);

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                               unsigned int gz, unsigned int bx, unsigned int by,
                                               unsigned int bz, unsigned int shared,
                                               CUstream stream, void **params) {
    (void)shared, (void)stream, (void)params;
    return kernel(f, gx, gy, gz, bx, by, bz);
}
LOCAL(cuLaunchCooperativeKernel_ptsz);

/* A new handle object of `kind`, on the current device (0 if none). */
static CUresult new_handle(enum kind kind, uint64_t *id) {
    struct object *o = add(kind, cur_dev < 0 || cur_dev >= cfg.devices ? 0 : cur_dev, 0);
    if (!o)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *id = o->id;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphCreate(CUgraph *graph, unsigned int flags) {
    uint64_t id = 0;
    CUresult r = enter();
    if (!r && (!graph || flags != 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = new_handle(K_GRAPH, &id);
    if (!r)
        *graph = (CUgraph)(uintptr_t)id;
    return leave(r);
}
LOCAL(cuGraphCreate);

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *exec, CUgraph graph,
                                            unsigned long long flags) {
    (void)flags;
    uint64_t id = 0;
    CUresult r = enter();
    if (!r && (!exec || !find((uint64_t)(uintptr_t)graph, K_GRAPH)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = new_handle(K_EXEC, &id);
    if (!r)
        *exec = (CUgraphExec)(uintptr_t)id;
    return leave(r);
}
LOCAL(cuGraphInstantiateWithFlags);

EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
    CUresult r = enter();
    if (!r)
        r = release((uint64_t)(uintptr_t)exec, K_EXEC);
    return leave(r);
}
LOCAL(cuGraphExecDestroy);

EXPORT CUresult cuGraphDestroy(CUgraph graph) {
    CUresult r = enter();
    if (!r)
        r = release((uint64_t)(uintptr_t)graph, K_GRAPH);
    return leave(r);
}
LOCAL(cuGraphDestroy);

static CUresult graph_launch(CUgraphExec exec) {
    CUresult r = enter();
    if (!r && !find((uint64_t)(uintptr_t)exec, K_EXEC))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = busy(cfg.graph_us * 1000ULL);
    return leave(r);
}

EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    (void)stream;
    return graph_launch(exec);
}
LOCAL(cuGraphLaunch);

EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
    (void)stream;
    return graph_launch(exec);
}
LOCAL(cuGraphLaunch_ptsz);

/* ---- events -------------------------------------------------------------------------- */

EXPORT CUresult cuEventCreate(CUevent *event, unsigned int flags) {
    (void)flags;
    uint64_t id = 0;
    CUresult r = enter();
    if (!r && !event)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = new_handle(K_EVENT, &id);
    if (!r)
        *event = (CUevent)(uintptr_t)id;
    return leave(r);
}
LOCAL(cuEventCreate);

EXPORT CUresult cuEventDestroy_v2(CUevent event) {
    CUresult r = enter();
    if (!r)
        r = release((uint64_t)(uintptr_t)event, K_EVENT);
    return leave(r);
}
LOCAL(cuEventDestroy_v2);

static CUresult event_record(CUevent event) {
    int dev = 0;
    CUresult r = enter();
    struct object *o = r ? NULL : find((uint64_t)(uintptr_t)event, K_EVENT);
    if (!r && !o)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = current(&dev);
    if (!r) {
        o->dev = dev;
        o->when = max_u64(now_ns(), devs[dev].busy_until);
        o->recorded = 1;
    }
    return leave(r);
}

EXPORT CUresult cuEventRecord(CUevent event, CUstream stream) {
    (void)stream;
    return event_record(event);
}
LOCAL(cuEventRecord);

EXPORT CUresult cuEventRecord_ptsz(CUevent event, CUstream stream) {
    (void)stream;
    return event_record(event);
}
LOCAL(cuEventRecord_ptsz);

EXPORT CUresult cuEventRecordWithFlags(CUevent event, CUstream stream, unsigned int flags) {
    (void)stream, (void)flags;
    return event_record(event);
}
LOCAL(cuEventRecordWithFlags);

EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent event, CUstream stream, unsigned int flags) {
    (void)stream, (void)flags;
    return event_record(event);
}
LOCAL(cuEventRecordWithFlags_ptsz);

/* The time an event completes (0: never recorded, so already complete). */
static CUresult event_when(CUevent event, uint64_t *when) {
    CUresult r = enter();
    const struct object *o = r ? NULL : find((uint64_t)(uintptr_t)event, K_EVENT);
    if (!r && !o)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        *when = o->recorded ? o->when : 0;
    return leave(r);
}

EXPORT CUresult cuEventQuery(CUevent event) {
    if (cfg.capturing && capture_mode == 0) {
        __atomic_store_n(&capture_invalidated, 1, __ATOMIC_RELAXED);
        return FAKE_CAPTURE_IMPLICIT;
    }
    uint64_t when = 0;
    CUresult r = event_when(event, &when);
    if (!r && now_ns() < when)
        r = CUDA_ERROR_NOT_READY;
    return r;
}
LOCAL(cuEventQuery);

EXPORT CUresult cuEventSynchronize(CUevent event) {
    uint64_t when = 0;
    CUresult r = event_when(event, &when);
    if (!r)
        sleep_until(when);
    return r;
}
LOCAL(cuEventSynchronize);

static CUresult elapsed(float *ms, CUevent start, CUevent end) {
    CUresult r = enter();
    const struct object *a = r ? NULL : find((uint64_t)(uintptr_t)start, K_EVENT);
    const struct object *b = r ? NULL : find((uint64_t)(uintptr_t)end, K_EVENT);
    if (!r && (!ms || !a || !b))
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r && (!a->recorded || !b->recorded))
        r = CUDA_ERROR_INVALID_HANDLE; /* what the real driver says for never-recorded events */
    uint64_t now = now_ns();
    if (!r && (now < a->when || now < b->when))
        r = CUDA_ERROR_NOT_READY;
    if (!r)
        *ms = (float)(((double)b->when - (double)a->when) / 1e6);
    return leave(r);
}

EXPORT CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end) {
    return elapsed(ms, start, end);
}
LOCAL(cuEventElapsedTime);

EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent start, CUevent end) {
    return elapsed(ms, start, end);
}
LOCAL(cuEventElapsedTime_v2);

/* ---- cuGetProcAddress ---------------------------------------------------------------- */

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags);
EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status);
LOCAL(cuGetProcAddress);
LOCAL(cuGetProcAddress_v2);

#define PTDS_SINCE 7000 /* per-thread default stream variants exist from CUDA 7.0 */

/*
 * What each base name resolves to: `v1` from version `since` (NULL: no such function
 * here), `v2` from version `v2_since`, and with CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
 * from PTDS_SINCE, `ptsz` (where there is one). Below `since`: not found.
 */
#define FN(f) ((void *)local_##f)
#define SAME(name, since) {#name, since, FN(name), 0, NULL, NULL}
#define V2(name, since, v2_since) {#name, since, NULL, v2_since, FN(name##_v2), NULL}
#define V1V2(name, since, v2_since) {#name, since, FN(name), v2_since, FN(name##_v2), NULL}
#define PTSZ(name, since) {#name, since, FN(name), 0, NULL, FN(name##_ptsz)}
static const struct proc {
    const char *name;
    int since;
    void *v1;
    int v2_since;
    void *v2;
    void *ptsz;
} PROCS[] = {
    SAME(cuInit, 2000),
    SAME(cuDriverGetVersion, 2020),
    SAME(cuDeviceGet, 2000),
    SAME(cuDeviceGetCount, 2000),
    SAME(cuDeviceGetName, 2000),
    V1V2(cuDeviceGetUuid, 9020, 11040),
    V2(cuDeviceTotalMem, 3020, 3020),
    SAME(cuDevicePrimaryCtxRetain, 7000),
    SAME(cuDevicePrimaryCtxRelease, 7000),
    SAME(cuCtxSetCurrent, 4000),
    SAME(cuCtxGetCurrent, 4000),
    SAME(cuCtxGetDevice, 2000),
    SAME(cuCtxSynchronize, 2000),
    PTSZ(cuStreamSynchronize, 2000),
    PTSZ(cuStreamIsCapturing, 10000),
    SAME(cuThreadExchangeStreamCaptureMode, 10010),
    SAME(cuGetErrorString, 6000),
    SAME(cuGetErrorName, 6000),
    V2(cuMemAlloc, 3020, 3020),
    V2(cuMemFree, 3020, 3020),
    V2(cuMemAllocPitch, 3020, 3020),
    SAME(cuMemAllocManaged, 6000),
    PTSZ(cuMemAllocAsync, 11020),
    PTSZ(cuMemAllocFromPoolAsync, 11020),
    PTSZ(cuMemFreeAsync, 11020),
    SAME(cuDeviceGetDefaultMemPool, 11020),
    SAME(cuMemCreate, 10020),
    SAME(cuMemRelease, 10020),
    SAME(cuMemGetAllocationGranularity, 10020),
    V2(cuMemGetInfo, 3020, 3020),
    V2(cuMemGetAddressRange, 3020, 3020),
    V2(cuArrayCreate, 3020, 3020),
    V2(cuArray3DCreate, 3020, 3020),
    SAME(cuArrayDestroy, 2000),
    SAME(cuArrayGetMemoryRequirements, 11060),
    PTSZ(cuLaunchKernel, 4000),
    PTSZ(cuLaunchKernelEx, 11060),
    PTSZ(cuLaunchCooperativeKernel, 9000),
    SAME(cuGraphCreate, 10000),
    SAME(cuGraphInstantiateWithFlags, 11040),
    SAME(cuGraphExecDestroy, 10000),
    SAME(cuGraphDestroy, 10000),
    PTSZ(cuGraphLaunch, 10000),
    SAME(cuEventCreate, 2000),
    V2(cuEventDestroy, 4000, 4000),
    PTSZ(cuEventRecord, 2000),
    PTSZ(cuEventRecordWithFlags, 11010),
    SAME(cuEventQuery, 2000),
    SAME(cuEventSynchronize, 2000),
    V1V2(cuEventElapsedTime, 2000, 12080),
    V1V2(cuGetProcAddress, 11030, 12000),
};

static CUresult proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (!symbol || !pfn || (flags & ~(cuuint64_t)3))
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    for (size_t i = 0; i < sizeof PROCS / sizeof PROCS[0]; i++) {
        const struct proc *p = &PROCS[i];
        if (strcmp(p->name, symbol) != 0)
            continue;
        found = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
        if (version < p->since)
            break;
        if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && version >= PTDS_SINCE &&
            p->ptsz)
            *pfn = p->ptsz;
        else if (p->v2 && version >= p->v2_since)
            *pfn = p->v2;
        else
            *pfn = p->v1;
        if (*pfn)
            found = CU_GET_PROC_ADDRESS_SUCCESS;
        break;
    }
    if (status)
        *status = found;
    return found == CU_GET_PROC_ADDRESS_SUCCESS ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    return proc_address(symbol, pfn, version, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status) {
    return proc_address(symbol, pfn, version, flags, status);
}

/* ---- fake-only exports for tests ----------------------------------------------------- */

/* GPU time of device `dev` completed up to now, in ns: work queued minus work still ahead. */
EXPORT int gpuletFakeBusyNs(int dev, unsigned long long *ns) {
    CUresult r = enter();
    if (!r && !ns)
        r = CUDA_ERROR_INVALID_VALUE;
    if (!r)
        r = check_dev(dev);
    if (!r) {
        uint64_t now = now_ns();
        uint64_t ahead = devs[dev].busy_until > now ? devs[dev].busy_until - now : 0;
        *ns = devs[dev].busy_assigned - ahead;
    }
    return leave(r);
}

/* Launches (kernels and graphs) so far on device `dev`, and its bytes reserved now. */
EXPORT int gpuletFakeStats(int dev, unsigned long long *launches,
                           unsigned long long *reserved_bytes) {
    CUresult r = enter();
    if (!r)
        r = check_dev(dev);
    if (!r && launches)
        *launches = devs[dev].launches;
    if (!r && reserved_bytes)
        *reserved_bytes = devs[dev].used;
    return leave(r);
}
