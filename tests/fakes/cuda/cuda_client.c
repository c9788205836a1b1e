/*
 * cuda_client.c: a CUDA driver API program for tests. It never links libcuda: it loads
 * "libcuda.so.1" (the fake in this directory, or whatever LD_LIBRARY_PATH finds, with or
 * without an LD_PRELOADed limiter) the way real programs do, then runs commands.
 *
 *   cuda_client MODE [--ptsz] COMMAND...
 *
 * MODE:
 *   runtime     like the CUDA 13 runtime: dlopen, dlsym("cuGetProcAddress_v2"), ask it for
 *               "" (a probe: must be not found), "cuInit" 2000, "cuGetProcAddress" 11030
 *               and 12000; then every other entry point through the 12000 (5-argument)
 *               pointer, by base name and the version that introduced the wanted variant.
 *   runtime-v1  the same, but everything through the 11030 (4-argument) pointer.
 *   dlsym       like Triton or CuPy: dlopen, then dlsym of exact names (cuMemAlloc_v2...).
 * --ptsz: the stream-ordered entry points are asked for with CU_GET_PROC_ADDRESS_PER_THREAD_
 *   DEFAULT_STREAM and version >= 7000 (dlsym: their "_ptsz" names), and work goes to
 *   CU_STREAM_PER_THREAD; without it, to the legacy stream (NULL).
 * Then cuInit(0) and device 0 is selected (primary context retained and made current).
 *
 * Each COMMAND is one argument ("alloc 64"); each prints exactly one line on stdout
 * (flushed). CUDA errors are printed as "... err CODE" and do not stop the client; the
 * grammar is in the comment above run_command. Exit status: 0, or 2 for a malformed command
 * line (message on stderr), or 3 when loading or initialising fails (message on stderr).
 */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_api.h"

/* ---- what cuda_api.h lacks ----------------------------------------------------------- */

typedef struct CUgraph_st *CUgraph;
#define CU_STREAM_PER_THREAD ((CUstream)0x2)
#define CU_MEM_ALLOCATION_TYPE_PINNED 1
#define CU_MEM_ALLOC_GRANULARITY_MINIMUM 0
#define CU_MEM_ATTACH_GLOBAL 1u
#define CU_AD_FORMAT_FLOAT 0x20
#define NVML_MEMORY_V2_VERSION ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))

typedef CUresult (*PFN_cuGetProcAddress)(const char *, void **, int, cuuint64_t);
typedef CUresult (*PFN_cuGetProcAddress_v2)(const char *, void **, int, cuuint64_t,
                                            CUdriverProcAddressQueryResult *);
typedef CUresult (*PFN_cuInit)(unsigned int);
typedef CUresult (*PFN_cuDeviceGet)(CUdevice *, int);
typedef CUresult (*PFN_cuDeviceGetCount)(int *);
typedef CUresult (*PFN_cuDeviceGetUuid)(CUuuid *, CUdevice);
typedef CUresult (*PFN_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
typedef CUresult (*PFN_cuCtxSetCurrent)(CUcontext);
typedef CUresult (*PFN_cuMemAlloc)(CUdeviceptr *, size_t);
typedef CUresult (*PFN_cuMemFree)(CUdeviceptr);
typedef CUresult (*PFN_cuMemAllocPitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
typedef CUresult (*PFN_cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned int);
typedef CUresult (*PFN_cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*PFN_cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef CUresult (*PFN_cuMemFreeAsync)(CUdeviceptr, CUstream);
typedef CUresult (*PFN_cuDeviceGetDefaultMemPool)(CUmemoryPool *, CUdevice);
typedef CUresult (*PFN_cuMemCreate)(CUmemGenericAllocationHandle *, size_t,
                                    const CUmemAllocationProp *, unsigned long long);
typedef CUresult (*PFN_cuMemRelease)(CUmemGenericAllocationHandle);
typedef CUresult (*PFN_cuMemGetAllocationGranularity)(size_t *, const CUmemAllocationProp *, int);
typedef CUresult (*PFN_cuMemGetInfo)(size_t *, size_t *);
typedef CUresult (*PFN_cuDeviceTotalMem)(size_t *, CUdevice);
typedef CUresult (*PFN_cuArrayCreate)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
typedef CUresult (*PFN_cuArrayDestroy)(CUarray);
typedef CUresult (*PFN_cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
                                       unsigned int, unsigned int, unsigned int, unsigned int,
                                       CUstream, void **, void **);
typedef CUresult (*PFN_cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*PFN_cuLaunchCooperativeKernel)(CUfunction, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, CUstream, void **);
typedef CUresult (*PFN_cuGraphCreate)(CUgraph *, unsigned int);
typedef CUresult (*PFN_cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*PFN_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*PFN_cuGraphExecDestroy)(CUgraphExec);
typedef CUresult (*PFN_cuGraphDestroy)(CUgraph);
typedef CUresult (*PFN_cuCtxSynchronize)(void);
typedef CUresult (*PFN_cuStreamSynchronize)(CUstream);
typedef CUresult (*PFN_cuEventCreate)(CUevent *, unsigned int);
typedef CUresult (*PFN_cuEventDestroy)(CUevent);
typedef CUresult (*PFN_cuEventRecord)(CUevent, CUstream);
typedef CUresult (*PFN_cuEventSynchronize)(CUevent);
typedef CUresult (*PFN_cuEventElapsedTime)(float *, CUevent, CUevent);
typedef int (*PFN_gpuletFakeBusyNs)(int, unsigned long long *);
typedef int (*PFN_gpuletFakeStats)(int, unsigned long long *, unsigned long long *);
typedef nvmlReturn_t (*PFN_nvmlInit_v2)(void);
typedef nvmlReturn_t (*PFN_nvmlDeviceGetHandleByIndex_v2)(unsigned int, nvmlDevice_t *);
typedef nvmlReturn_t (*PFN_nvmlDeviceGetMemoryInfo)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*PFN_nvmlDeviceGetMemoryInfo_v2)(nvmlDevice_t, nvmlMemory_v2_t *);

/*
 * The entry points used: base name, the version the runtime asks for, whether it is
 * stream-ordered (has a _ptsz variant), and the exact name dlsym mode looks up.
 */
#define ENTRY_POINTS(X)                                                                       \
    X(cuInit, 2000, 0, cuInit)                                                                \
    X(cuDeviceGet, 2000, 0, cuDeviceGet)                                                      \
    X(cuDeviceGetCount, 2000, 0, cuDeviceGetCount)                                            \
    X(cuDeviceGetUuid, 11040, 0, cuDeviceGetUuid_v2)                                          \
    X(cuDevicePrimaryCtxRetain, 7000, 0, cuDevicePrimaryCtxRetain)                            \
    X(cuCtxSetCurrent, 4000, 0, cuCtxSetCurrent)                                              \
    X(cuMemAlloc, 3020, 0, cuMemAlloc_v2)                                                     \
    X(cuMemFree, 3020, 0, cuMemFree_v2)                                                       \
    X(cuMemAllocPitch, 3020, 0, cuMemAllocPitch_v2)                                           \
    X(cuMemAllocManaged, 6000, 0, cuMemAllocManaged)                                          \
    X(cuMemAllocAsync, 11020, 1, cuMemAllocAsync)                                             \
    X(cuMemAllocFromPoolAsync, 11020, 1, cuMemAllocFromPoolAsync)                             \
    X(cuMemFreeAsync, 11020, 1, cuMemFreeAsync)                                               \
    X(cuDeviceGetDefaultMemPool, 11020, 0, cuDeviceGetDefaultMemPool)                         \
    X(cuMemCreate, 10020, 0, cuMemCreate)                                                     \
    X(cuMemRelease, 10020, 0, cuMemRelease)                                                   \
    X(cuMemGetAllocationGranularity, 10020, 0, cuMemGetAllocationGranularity)                 \
    X(cuMemGetInfo, 3020, 0, cuMemGetInfo_v2)                                                 \
    X(cuDeviceTotalMem, 3020, 0, cuDeviceTotalMem_v2)                                         \
    X(cuArrayCreate, 3020, 0, cuArrayCreate_v2)                                               \
    X(cuArrayDestroy, 2000, 0, cuArrayDestroy)                                                \
    X(cuLaunchKernel, 4000, 1, cuLaunchKernel)                                                \
    X(cuLaunchKernelEx, 11060, 1, cuLaunchKernelEx)                                           \
    X(cuLaunchCooperativeKernel, 9000, 1, cuLaunchCooperativeKernel)                          \
    X(cuGraphCreate, 10000, 0, cuGraphCreate)                                                 \
    X(cuGraphInstantiateWithFlags, 11040, 0, cuGraphInstantiateWithFlags)                     \
    X(cuGraphLaunch, 10000, 1, cuGraphLaunch)                                                 \
    X(cuGraphExecDestroy, 10000, 0, cuGraphExecDestroy)                                       \
    X(cuGraphDestroy, 10000, 0, cuGraphDestroy)                                               \
    X(cuCtxSynchronize, 2000, 0, cuCtxSynchronize)                                            \
    X(cuStreamSynchronize, 2000, 1, cuStreamSynchronize)                                      \
    X(cuEventCreate, 2000, 0, cuEventCreate)                                                  \
    X(cuEventDestroy, 4000, 0, cuEventDestroy_v2)                                             \
    X(cuEventRecord, 2000, 1, cuEventRecord)                                                  \
    X(cuEventSynchronize, 2000, 0, cuEventSynchronize)                                        \
    X(cuEventElapsedTime, 2000, 0, cuEventElapsedTime)

#define FIELD(name, version, stream_ordered, exact) PFN_##name name;
static struct {
    ENTRY_POINTS(FIELD)
} cu;

enum mode { MODE_RUNTIME, MODE_RUNTIME_V1, MODE_DLSYM };

static void *lib;
static enum mode mode;
static int ptsz;
static PFN_cuGetProcAddress gpa_v1;    /* runtime modes: "cuGetProcAddress" at 11030 */
static PFN_cuGetProcAddress_v2 gpa_v2; /* runtime: at 12000; dlsym: dlsym'd when needed */
static CUstream stream;
static int device; /* ordinal of the current device */
static char kernel_image;
#define KERNEL ((CUfunction)(void *)&kernel_image) /* any non-NULL handle will do */

__attribute__((noreturn, format(printf, 2, 3))) static void die(int status, const char *fmt,
                                                                 ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda_client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(status);
}

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {
        .tv_sec = (time_t)(ns / 1000000000ULL),
        .tv_nsec = (long)(ns % 1000000000ULL),
    };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* ---- loading ------------------------------------------------------------------------- */

/* Asks the chosen cuGetProcAddress; CUDA_ERROR_NOT_FOUND and friends are returned. */
static CUresult proc_address(const char *name, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status) {
    if (mode == MODE_RUNTIME_V1)
        return gpa_v1(name, pfn, version, flags);
    if (!gpa_v2) {
        void *p = dlsym(lib, "cuGetProcAddress_v2");
        if (!p)
            die(3, "dlsym(cuGetProcAddress_v2): %s", dlerror());
        memcpy(&gpa_v2, &p, sizeof p);
    }
    return gpa_v2(name, pfn, version, flags, status);
}

static void load_one(void *slot, const char *name, int version, int stream_ordered,
                     const char *exact) {
    void *p = NULL;
    if (mode == MODE_DLSYM) {
        char sym[128];
        snprintf(sym, sizeof sym, "%s%s", exact, ptsz && stream_ordered ? "_ptsz" : "");
        p = dlsym(lib, sym);
        if (!p)
            die(3, "dlsym(%s): %s", sym, dlerror());
    } else {
        cuuint64_t flags = CU_GET_PROC_ADDRESS_DEFAULT;
        if (ptsz && stream_ordered) {
            flags = CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
            version = version < 7000 ? 7000 : version;
        }
        CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
        CUresult r = proc_address(name, &p, version, flags, &status);
        if (r != CUDA_SUCCESS || !p)
            die(3, "cuGetProcAddress(%s, %d, %llu): error %d, status %d", name, version, flags, r,
                status);
    }
    memcpy(slot, &p, sizeof p);
}

/* The CUDA 13 runtime's first steps: a probe, cuInit, then both cuGetProcAddress versions. */
static void runtime_bootstrap(void) {
    void *sym = dlsym(lib, "cuGetProcAddress_v2");
    if (!sym)
        die(3, "dlsym(cuGetProcAddress_v2): %s", dlerror());
    PFN_cuGetProcAddress_v2 first;
    memcpy(&first, &sym, sizeof sym);
    void *p = NULL;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult r = first("", &p, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r == CUDA_SUCCESS)
        die(3, "cuGetProcAddress_v2(\"\") found something");
    r = first("cuInit", &p, 2000, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || !p)
        die(3, "cuGetProcAddress_v2(cuInit, 2000): error %d", r);
    r = first("cuGetProcAddress", &p, 11030, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || !p)
        die(3, "cuGetProcAddress_v2(cuGetProcAddress, 11030): error %d", r);
    memcpy(&gpa_v1, &p, sizeof p);
    r = first("cuGetProcAddress", &p, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || !p)
        die(3, "cuGetProcAddress_v2(cuGetProcAddress, 12000): error %d", r);
    memcpy(&gpa_v2, &p, sizeof p);
}

static CUresult select_device(int ordinal) {
    CUdevice dev;
    CUcontext ctx;
    CUresult r = cu.cuDeviceGet(&dev, ordinal);
    if (!r)
        r = cu.cuDevicePrimaryCtxRetain(&ctx, dev);
    if (!r)
        r = cu.cuCtxSetCurrent(ctx);
    if (!r)
        device = ordinal;
    return r;
}

static void load(void) {
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib)
        die(3, "dlopen(libcuda.so.1): %s", dlerror());
    if (mode != MODE_DLSYM)
        runtime_bootstrap();
#define LOAD(name, version, stream_ordered, exact)                                           \
    load_one((void *)&cu.name, #name, version, stream_ordered, #exact);
    ENTRY_POINTS(LOAD)
#undef LOAD
    stream = ptsz ? CU_STREAM_PER_THREAD : NULL;
    CUresult r = cu.cuInit(0);
    if (r)
        die(3, "cuInit(0): error %d", r);
    r = select_device(0);
    if (r)
        die(3, "selecting device 0: error %d", r);
}

/* A fake-only export of the fake libcuda.so.1, looked up on the same handle. */
static void *fake_export(const char *name) {
    void *p = dlsym(lib, name);
    if (!p)
        die(3, "dlsym(%s): %s (not the fake libcuda.so.1?)", name, dlerror());
    return p;
}

/* ---- allocations --------------------------------------------------------------------- */

enum akind { A_MEM, A_ASYNC, A_VMM, A_ARRAY };
struct alloc {
    enum akind kind;
    CUdeviceptr ptr;
    CUmemGenericAllocationHandle handle;
    CUarray array;
};
static struct alloc *allocs;
static size_t nallocs, capallocs;

static void push(struct alloc a) {
    if (nallocs == capallocs) {
        capallocs = capallocs ? capallocs * 2 : 64;
        allocs = realloc(allocs, capallocs * sizeof *allocs);
        if (!allocs)
            die(3, "out of host memory");
    }
    allocs[nallocs++] = a;
}

/* Frees the newest allocation with its matching call; 1 if the stack was empty. */
static int pop_free(CUresult *r) {
    if (nallocs == 0)
        return 1;
    struct alloc a = allocs[--nallocs];
    switch (a.kind) {
    case A_MEM:
        *r = cu.cuMemFree(a.ptr);
        break;
    case A_ASYNC:
        *r = cu.cuMemFreeAsync(a.ptr, stream);
        break;
    case A_VMM:
        *r = cu.cuMemRelease(a.handle);
        break;
    case A_ARRAY:
        *r = cu.cuArrayDestroy(a.array);
        break;
    }
    return 0;
}

/* ---- parsing ------------------------------------------------------------------------- */

#define MAX_WORDS 7

static const char *command_text; /* for messages */

__attribute__((noreturn)) static void malformed(const char *why) {
    die(2, "malformed command \"%s\": %s", command_text, why);
}

static uint64_t number(const char *word) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(word, &end, 10);
    if (word[0] < '0' || word[0] > '9' || *end || errno)
        malformed("expected a non-negative decimal integer");
    return n;
}

static double seconds(const char *word) {
    char *end;
    errno = 0;
    double s = strtod(word, &end);
    if (end == word || *end || errno || !isfinite(s) || s < 0 || s > 86400)
        malformed("expected seconds (0..86400)");
    return s;
}

static size_t mib(const char *word) {
    uint64_t n = number(word);
    if (n > (SIZE_MAX >> 20))
        malformed("too many MiB");
    return (size_t)n << 20;
}

static unsigned int uint_arg(const char *word) {
    uint64_t n = number(word);
    if (n > 0xffffffffULL)
        malformed("number too large");
    return (unsigned int)n;
}

/* ---- commands ------------------------------------------------------------------------ */

/* Prints "<what> ok" or "<what> err CODE". */
static void result(const char *what, CUresult r) {
    if (r)
        say("%s err %d", what, r);
    else
        say("%s ok", what);
}

static void alloc_result(const char *what, CUresult r, struct alloc a) {
    if (!r)
        push(a);
    result(what, r);
}

enum launch_kind { L_KERNEL, L_EX, L_COOP };

static CUresult launch(enum launch_kind kind, unsigned int us) {
    switch (kind) {
    case L_EX: {
        CUlaunchConfig config = {.gridDimX = us, .gridDimY = 1, .gridDimZ = 1, .blockDimX = 1,
                                 .blockDimY = 1, .blockDimZ = 1, .hStream = stream};
        return cu.cuLaunchKernelEx(&config, KERNEL, NULL, NULL);
    }
    case L_COOP:
        return cu.cuLaunchCooperativeKernel(KERNEL, us, 1, 1, 1, 1, 1, 0, stream, NULL);
    default:
        return cu.cuLaunchKernel(KERNEL, us, 1, 1, 1, 1, 1, 0, stream, NULL, NULL);
    }
}

static CUresult launches(enum launch_kind kind, uint64_t n, unsigned int us) {
    CUresult r = CUDA_SUCCESS;
    for (uint64_t i = 0; i < n && !r; i++)
        r = launch(kind, us);
    return r;
}

static CUresult graph(uint64_t n) {
    CUgraph g;
    CUgraphExec exec;
    CUresult r = cu.cuGraphCreate(&g, 0);
    if (r)
        return r;
    r = cu.cuGraphInstantiateWithFlags(&exec, g, 0);
    if (!r) {
        for (uint64_t i = 0; i < n && !r; i++)
            r = cu.cuGraphLaunch(exec, stream);
        CUresult d = cu.cuGraphExecDestroy(exec);
        r = r ? r : d;
    }
    CUresult d = cu.cuGraphDestroy(g);
    return r ? r : d;
}

static void vmm(const char *what, size_t bytes) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    size_t g = 0;
    CUresult r = cu.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    struct alloc a = {.kind = A_VMM};
    if (!r && g == 0)
        r = CUDA_ERROR_UNKNOWN;
    if (!r)
        r = cu.cuMemCreate(&a.handle, (bytes + g - 1) / g * g, &prop, 0);
    alloc_result(what, r, a);
}

static void nvml(int v2) {
    static void *nvml_lib;
    static int initialised;
    if (!nvml_lib) {
        nvml_lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
        if (!nvml_lib) {
            say("nvml err dlopen");
            return;
        }
    }
    void *init = dlsym(nvml_lib, "nvmlInit_v2");
    void *by_index = dlsym(nvml_lib, "nvmlDeviceGetHandleByIndex_v2");
    void *info = dlsym(nvml_lib, v2 ? "nvmlDeviceGetMemoryInfo_v2" : "nvmlDeviceGetMemoryInfo");
    if (!init || !by_index || !info) {
        say("nvml err dlsym");
        return;
    }
    nvmlReturn_t r = NVML_SUCCESS;
    if (!initialised) {
        PFN_nvmlInit_v2 f;
        memcpy(&f, &init, sizeof init);
        r = f();
        initialised = r == NVML_SUCCESS;
    }
    nvmlDevice_t dev = NULL;
    if (!r) {
        PFN_nvmlDeviceGetHandleByIndex_v2 f;
        memcpy(&f, &by_index, sizeof by_index);
        r = f((unsigned int)device, &dev);
    }
    unsigned long long total = 0, free_bytes = 0, used = 0;
    if (!r && v2) {
        PFN_nvmlDeviceGetMemoryInfo_v2 f;
        memcpy(&f, &info, sizeof info);
        nvmlMemory_v2_t mem = {.version = NVML_MEMORY_V2_VERSION};
        r = f(dev, &mem);
        total = mem.total, free_bytes = mem.free, used = mem.used;
    } else if (!r) {
        PFN_nvmlDeviceGetMemoryInfo f;
        memcpy(&f, &info, sizeof info);
        nvmlMemory_t mem = {0};
        r = f(dev, &mem);
        total = mem.total, free_bytes = mem.free, used = mem.used;
    }
    if (r)
        say("nvml err %d", r);
    else
        say("nvml total=%llu free=%llu used=%llu", total, free_bytes, used);
}

/*
 * A launch loop of `us`-µs kernels for `secs` 1-second windows. Work is queued in batches of
 * ~25 ms with an event after each; before queuing batch b the client waits for batch b-2, so
 * the GPU always has 25-50 ms queued and the queue never grows without bound.
 */
static void run(uint64_t secs, unsigned int us) {
    PFN_gpuletFakeBusyNs busy_ns;
    void *p = fake_export("gpuletFakeBusyNs");
    memcpy(&busy_ns, &p, sizeof p);
    CUevent ev[2];
    CUresult r = cu.cuEventCreate(&ev[0], 0);
    if (!r)
        r = cu.cuEventCreate(&ev[1], 0);
    if (r) {
        say("run err %d", r);
        return;
    }
    uint64_t batch = us ? 25000 / us : 1;
    batch = batch ? batch : 1;
    unsigned long long busy0 = 0, busy1 = 0;
    busy_ns(device, &busy0);
    uint64_t start = now_ns(), count = 0;
    for (uint64_t window = 0, b = 0; window < secs && !r; b++) {
        if (b >= 2)
            r = cu.cuEventSynchronize(ev[b % 2]);
        if (!r)
            r = launches(L_KERNEL, batch, us);
        if (!r)
            r = cu.cuEventRecord(ev[b % 2], stream);
        if (r)
            break;
        count += batch;
        uint64_t now = now_ns();
        if (now - start >= 1000000000ULL) {
            busy_ns(device, &busy1);
            say("window %llu busy=%.3f launches=%llu", (unsigned long long)window,
                (double)(busy1 - busy0) / (double)(now - start), (unsigned long long)count);
            window++;
            start = now, busy0 = busy1, count = 0;
        }
    }
    CUresult s = cu.cuStreamSynchronize(stream);
    r = r ? r : s;
    cu.cuEventDestroy(ev[0]);
    cu.cuEventDestroy(ev[1]);
    if (r)
        say("run err %d", r);
    else
        say("run done");
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * A latency-sensitive service: for `secs` seconds, in bursts of `on_ms` every `period_ms`,
 * one `us`-µs kernel launched and waited for (launch to completion), then `gap_us` idle, and
 * so on; idle between bursts. Prints the kernels done, their latency percentiles, and per
 * burst the time from its start to the end of its first kernel that took at most `ok_us`
 * (the time a neighbour took to make room; the worst and the median over the bursts).
 */
static void service(uint64_t secs, unsigned int us, unsigned int gap_us, unsigned int on_ms,
                    unsigned int period_ms, unsigned int ok_us) {
    enum { MAX_SAMPLES = 200000, MAX_BURSTS = 4096 };
    static uint64_t lat[MAX_SAMPLES], room[MAX_BURSTS];
    uint64_t n = 0, bursts = 0, start = now_ns(), end = start + secs * 1000000000ULL;
    uint64_t period = period_ms * 1000000ULL, burst = UINT64_MAX;
    int waiting = 0;
    CUresult r = CUDA_SUCCESS;
    for (uint64_t now = start; now < end && !r && n < MAX_SAMPLES; now = now_ns()) {
        uint64_t in_period = (now - start) % period;
        if (in_period >= on_ms * 1000000ULL) {
            sleep_ns(period - in_period);
            continue;
        }
        if ((now - start) / period != burst) { /* a new burst */
            burst = (now - start) / period;
            waiting = bursts < MAX_BURSTS;
        }
        uint64_t t0 = now_ns();
        r = launches(L_KERNEL, 1, us);
        if (!r)
            r = cu.cuStreamSynchronize(stream);
        uint64_t t1 = now_ns();
        lat[n++] = t1 - t0;
        if (waiting && t1 - t0 <= ok_us * 1000ULL) {
            room[bursts++] = t1 - (start + burst * period);
            waiting = 0;
        }
        if (gap_us)
            sleep_ns(gap_us * 1000ULL);
    }
    if (r || n == 0 || bursts == 0) {
        say("service err %d", r);
        return;
    }
    qsort(lat, n, sizeof lat[0], by_value);
    qsort(room, bursts, sizeof room[0], by_value);
    say("service kernels=%llu p50_us=%llu p99_us=%llu max_us=%llu room_p50_us=%llu "
        "room_max_us=%llu",
        (unsigned long long)n, (unsigned long long)(lat[n / 2] / 1000),
        (unsigned long long)(lat[n * 99 / 100] / 1000), (unsigned long long)(lat[n - 1] / 1000),
        (unsigned long long)(room[bursts / 2] / 1000),
        (unsigned long long)(room[bursts - 1] / 1000));
}

static void events(unsigned int us) {
    CUevent a = NULL, b = NULL;
    float ms = 0;
    CUresult r = cu.cuEventCreate(&a, 0);
    if (!r)
        r = cu.cuEventCreate(&b, 0);
    if (!r)
        r = cu.cuEventRecord(a, stream);
    if (!r)
        r = launch(L_KERNEL, us);
    if (!r)
        r = cu.cuEventRecord(b, stream);
    if (!r)
        r = cu.cuEventSynchronize(b);
    if (!r)
        r = cu.cuEventElapsedTime(&ms, a, b);
    if (a)
        cu.cuEventDestroy(a);
    if (b)
        cu.cuEventDestroy(b);
    if (r)
        say("events err %d", r);
    else
        say("events ms=%.3f", (double)ms);
}

/* `shown` is how the command named it ("" for the empty name). */
static void lookup(const char *name, const char *shown, int version, cuuint64_t flags) {
    void *p = NULL;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SUCCESS;
    CUresult r = proc_address(name, &p, version, flags, &status);
    Dl_info info;
    if (r != CUDA_SUCCESS || !p)
        say("lookup %s missing", shown);
    else if (dladdr(p, &info) && info.dli_sname && info.dli_saddr == p)
        say("lookup %s found %s", shown, info.dli_sname);
    else
        say("lookup %s found ?", shown);
}

static int arity(size_t args, size_t expected) {
    static const char *const want[] = {"no arguments expected", "1 argument expected",
                                       "2 arguments expected", "3 arguments expected"};
    if (args != expected)
        malformed(want[expected]);
    return 1;
}

/*
 * The commands: one line of output each; on a CUDA error "<command> err CODE" instead of ok.
 *   device N              select device N             -> device N ok
 *   alloc MIB             cuMemAlloc                  -> alloc MIB ok
 *   alloc-bytes N         cuMemAlloc of N bytes       -> alloc-bytes N ok
 *   pitch W H             cuMemAllocPitch, 4-byte el. -> pitch W H ok
 *   managed MIB           cuMemAllocManaged           -> managed MIB ok
 *   async MIB             cuMemAllocAsync             -> async MIB ok
 *   pool MIB              cuMemAllocFromPoolAsync, the device's default pool -> pool MIB ok
 *   vmm MIB               cuMemCreate, rounded up to the granularity -> vmm MIB ok
 *   array W H             cuArrayCreate, float, 1 channel -> array W H ok
 *   array-format W H F    cuArrayCreate, format F (decimal), 1 channel -> ... ok
 *   free                  frees the newest allocation -> free ok | free err CODE | free none
 *   free-all              frees them all, newest first -> free-all ok N | free-all err CODE
 *   info                  cuMemGetInfo                -> info free=F total=T
 *   total                 cuDeviceTotalMem            -> total T
 *   uuid                  cuDeviceGetUuid             -> uuid GPU-8-4-4-4-12 hex digits
 *   nvml | nvml2          NVML memory info (v1 | v2)  -> nvml total=T free=F used=U
 *   launch N US           N cuLaunchKernel of US µs   -> launch N ok
 *   launch-ex N US        N cuLaunchKernelEx          -> launch-ex N ok
 *   coop N US             N cuLaunchCooperativeKernel -> coop N ok
 *   graph N               one graph launched N times  -> graph N ok
 *   sync                  cuStreamSynchronize, cuCtxSynchronize -> sync ok
 *   run SECONDS US        a launch loop               -> window I busy=F launches=K ..., run done
 *   service S US GAP ON PERIOD OK  kernels waited for one by one, GAP µs apart, in bursts of
 *                         ON ms every PERIOD ms -> service kernels=N p50_us=A p99_us=B
 *                         max_us=C room_p50_us=D room_max_us=E (burst start to the end of its
 *                         first kernel of at most OK µs)
 *   events US             elapsed time around a kernel -> events ms=X
 *   stats                 gpuletFakeStats             -> stats launches=L reserved=R
 *   lookup NAME VER FLAGS cuGetProcAddress (NAME "" is the empty name)
 *                                                     -> lookup NAME found SYMBOL | missing
 *   hold SECONDS          sleep                       -> hold ok
 *   wait-file PATH        poll every 10 ms            -> wait-file ok
 *   touch PATH            create PATH                 -> touch ok
 *   pid                                               -> pid N
 *   clock                 CLOCK_MONOTONIC, in ns      -> clock NS
 */
static void run_command(const char *text) {
    char buf[1024], *words[MAX_WORDS + 1];
    size_t n = 0;
    command_text = text;
    if (strlen(text) >= sizeof buf)
        malformed("too long");
    strcpy(buf, text);
    const char *rest = text + strspn(text, " ");
    rest += strcspn(rest, " ");
    rest += strspn(rest, " "); /* everything after the command word: a path */
    char *save = NULL;
    for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        if (n == MAX_WORDS)
            malformed("too many words");
        words[n++] = w;
    }
    if (n == 0)
        malformed("empty");
    const char *cmd = words[0];
    size_t args = n - 1;
    /* `cmd` is `name`; exits 2 unless it has `nargs` arguments */
#define IS(name, nargs) (strcmp(cmd, name) == 0 && arity(args, nargs))
    CUresult r = CUDA_SUCCESS;
    if (IS("device", 1)) {
        r = select_device((int)uint_arg(words[1]) & 0x7fffffff);
        result(text, r);
    } else if (IS("alloc", 1)) {
        struct alloc a = {.kind = A_MEM};
        alloc_result(text, cu.cuMemAlloc(&a.ptr, mib(words[1])), a);
    } else if (IS("alloc-bytes", 1)) {
        struct alloc a = {.kind = A_MEM};
        uint64_t bytes = number(words[1]);
        if (bytes > SIZE_MAX)
            malformed("too many bytes");
        alloc_result(text, cu.cuMemAlloc(&a.ptr, (size_t)bytes), a);
    } else if (IS("pitch", 2)) {
        struct alloc a = {.kind = A_MEM};
        size_t pitch = 0;
        r = cu.cuMemAllocPitch(&a.ptr, &pitch, number(words[1]), number(words[2]), 4);
        alloc_result(text, r, a);
    } else if (IS("managed", 1)) {
        struct alloc a = {.kind = A_MEM};
        alloc_result(text, cu.cuMemAllocManaged(&a.ptr, mib(words[1]), CU_MEM_ATTACH_GLOBAL), a);
    } else if (IS("async", 1)) {
        struct alloc a = {.kind = A_ASYNC};
        alloc_result(text, cu.cuMemAllocAsync(&a.ptr, mib(words[1]), stream), a);
    } else if (IS("pool", 1)) {
        struct alloc a = {.kind = A_ASYNC};
        CUmemoryPool pool = NULL;
        size_t bytes = mib(words[1]);
        r = cu.cuDeviceGetDefaultMemPool(&pool, device);
        if (!r)
            r = cu.cuMemAllocFromPoolAsync(&a.ptr, bytes, pool, stream);
        alloc_result(text, r, a);
    } else if (IS("vmm", 1)) {
        vmm(text, mib(words[1]));
    } else if (IS("array", 2) || IS("array-format", 3)) {
        struct alloc a = {.kind = A_ARRAY};
        CUDA_ARRAY_DESCRIPTOR desc = {.Width = number(words[1]), .Height = number(words[2]),
                                      .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
        if (args == 3)
            desc.Format = (int)number(words[3]);
        alloc_result(text, cu.cuArrayCreate(&a.array, &desc), a);
    } else if (IS("free", 0)) {
        if (pop_free(&r))
            say("free none");
        else
            result("free", r);
    } else if (IS("free-all", 0)) {
        CUresult first = CUDA_SUCCESS;
        unsigned long long freed = 0;
        while (!pop_free(&r)) {
            freed++;
            first = first ? first : r;
        }
        if (first)
            say("free-all err %d", first);
        else
            say("free-all ok %llu", freed);
    } else if (IS("info", 0)) {
        size_t free_bytes = 0, total = 0;
        r = cu.cuMemGetInfo(&free_bytes, &total);
        if (r)
            say("info err %d", r);
        else
            say("info free=%zu total=%zu", free_bytes, total);
    } else if (IS("total", 0)) {
        size_t total = 0;
        r = cu.cuDeviceTotalMem(&total, device);
        if (r)
            say("total err %d", r);
        else
            say("total %zu", total);
    } else if (IS("uuid", 0)) {
        CUuuid id;
        r = cu.cuDeviceGetUuid(&id, device);
        const unsigned char *b = (const unsigned char *)id.bytes;
        if (r)
            say("uuid err %d", r);
        else
            say("uuid GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                b[13], b[14], b[15]);
    } else if (IS("nvml", 0)) {
        nvml(0);
    } else if (IS("nvml2", 0)) {
        nvml(1);
    } else if (IS("launch", 2)) {
        char what[64];
        snprintf(what, sizeof what, "launch %s", words[1]);
        result(what, launches(L_KERNEL, number(words[1]), uint_arg(words[2])));
    } else if (IS("launch-ex", 2)) {
        char what[64];
        snprintf(what, sizeof what, "launch-ex %s", words[1]);
        result(what, launches(L_EX, number(words[1]), uint_arg(words[2])));
    } else if (IS("coop", 2)) {
        char what[64];
        snprintf(what, sizeof what, "coop %s", words[1]);
        result(what, launches(L_COOP, number(words[1]), uint_arg(words[2])));
    } else if (IS("graph", 1)) {
        result(text, graph(number(words[1])));
    } else if (IS("sync", 0)) {
        r = cu.cuStreamSynchronize(stream);
        if (!r)
            r = cu.cuCtxSynchronize();
        result("sync", r);
    } else if (IS("run", 2)) {
        uint64_t secs = number(words[1]);
        run(secs, uint_arg(words[2]));
    } else if (IS("service", 6)) {
        service(number(words[1]), uint_arg(words[2]), uint_arg(words[3]), uint_arg(words[4]),
                uint_arg(words[5]), uint_arg(words[6]));
    } else if (IS("events", 1)) {
        events(uint_arg(words[1]));
    } else if (IS("stats", 0)) {
        PFN_gpuletFakeStats stats;
        void *p = fake_export("gpuletFakeStats");
        memcpy(&stats, &p, sizeof p);
        unsigned long long count = 0, reserved = 0;
        r = stats(device, &count, &reserved);
        if (r)
            say("stats err %d", r);
        else
            say("stats launches=%llu reserved=%llu", count, reserved);
    } else if (IS("lookup", 3)) {
        const char *name = strcmp(words[1], "\"\"") == 0 ? "" : words[1];
        lookup(name, words[1], (int)(uint_arg(words[2]) & 0x7fffffff), number(words[3]));
    } else if (IS("hold", 1)) {
        sleep_ns((uint64_t)(seconds(words[1]) * 1e9));
        say("hold ok");
    } else if (strcmp(cmd, "wait-file") == 0 || strcmp(cmd, "touch") == 0) {
        if (!*rest)
            malformed("a path expected");
        if (cmd[0] == 'w') {
            while (access(rest, F_OK) != 0)
                sleep_ns(10000000);
        } else {
            int fd = open(rest, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0)
                die(3, "touch %s: %s", rest, strerror(errno));
            close(fd);
        }
        say("%s ok", cmd);
    } else if (IS("pid", 0)) {
        say("pid %ld", (long)getpid());
    } else if (IS("clock", 0)) {
        say("clock %llu", (unsigned long long)now_ns());
    } else {
        malformed("unknown command");
    }
#undef IS
}

int main(int argc, char **argv) {
    int i = 1;
    const char *usage = "usage: cuda_client runtime|runtime-v1|dlsym [--ptsz] COMMAND...";
    if (argc < 2)
        die(2, "%s", usage);
    if (strcmp(argv[1], "runtime") == 0)
        mode = MODE_RUNTIME;
    else if (strcmp(argv[1], "runtime-v1") == 0)
        mode = MODE_RUNTIME_V1;
    else if (strcmp(argv[1], "dlsym") == 0)
        mode = MODE_DLSYM;
    else
        die(2, "unknown mode \"%s\"; %s", argv[1], usage);
    i++;
    if (i < argc && strcmp(argv[i], "--ptsz") == 0) {
        ptsz = 1;
        i++;
    }
    load();
    for (; i < argc; i++)
        run_command(argv[i]);
    free(allocs);
    return 0;
}
