/*
 * fake_nvml.c: a stand-in for the NVIDIA driver's libnvidia-ml.so.1, so that the real
 * pynvml (nvidia-ml-py) runs without a GPU. tests/fakes/nvml/__init__.py builds it as
 * libnvidia-ml.so.1 (soname libnvidia-ml.so.1); a test process loads it before pynvml's
 * first nvmlInit, so pynvml's dlopen("libnvidia-ml.so.1") finds it by soname.
 *
 * It exports only the entry points in FAKE_NVML_ENTRY_POINTS below and nvmlErrorString,
 * with NVML's signatures, struct layouts and return codes as nvidia-ml-py 13 declares them,
 * and fake_nvml_reload, which is not NVML (see below). Everything else is static.
 *
 * The node it pretends to be is read at the first nvmlInit*() (and again after the last
 * nvmlShutdown) from the file named by the environment variable GPULET_FAKE_NVML.
 *   - variable unset or empty, file missing or unreadable: NVML_ERROR_DRIVER_NOT_LOADED;
 *   - a malformed file: NVML_ERROR_UNKNOWN, and one line on stderr:
 *     "fake_nvml: <file>:<line>: <problem>".
 *
 * File format: one directive per line, fields separated by blanks (space or tab); blank
 * lines and lines whose first non-blank character is '#' are ignored; lines are at most
 * 511 characters; numbers are decimal.
 *
 *   driver <version>                      required; nvmlSystemGetDriverVersion
 *   cuda <version>                        required; nvmlSystemGetCudaDriverVersion(_v2)
 *   gpu <index> <uuid> <memory_total_bytes> <bus_id> <minor> <mig 0|1> <nvlink 0|1> <name...>
 *   link <gpu_index> <link> <active 0|1> <remote_bus_id | -> <gpu|ibmnpu|switch|unknown>
 *   process <gpu_index> <pid> <used_bytes | ->
 *   util <gpu_index> <pid> <sm_percent> <timestamp_us>
 *   fail <entry point> <nvml return code> [<gpu_index> | - [<times>]]
 *
 * gpu: index is NVML's enumeration order; the indices must be 0..N-1, each once, N <= 64.
 *   The name is the rest of the line. Memory: total as given, free = total, used = 0
 *   (v2: reserved = 0). MIG: current mode = pending mode = <mig>.
 * bus ids: DDDD:BB:DD.F to DDDDDDDD:BB:DD.F, hex, either case. NVML reports them upper
 *   case: busId "%08X:%02X:%02X.%X", busIdLegacy "%04X:%02X:%02X.%X".
 * NVLink, as a real driver answers: a GPU with <nvlink 0> returns NVML_ERROR_NOT_SUPPORTED
 *   to every NVLink query; with <nvlink 1>, a link number that has no link line (or is
 *   >= 36, NVML_NVLINK_MAX_LINKS) returns NVML_ERROR_INVALID_ARGUMENT.
 * link: comes after the gpu line it names. remote bus id "-" reports an all-zero
 *   nvmlPciInfo_t (empty bus ids) for a link with nothing known behind it.
 * process: a compute process on that GPU (after its gpu line), as
 *   nvmlDeviceGetComputeRunningProcesses_v2/_v3 list them, in config order: usedGpuMemory
 *   is used_bytes, or NVML_VALUE_NOT_AVAILABLE (ULLONG_MAX, which pynvml turns into None)
 *   for "-"; gpuInstanceId = computeInstanceId = 0xFFFFFFFF (not in a MIG instance). A pid
 *   may be given twice. At most 1024 process lines.
 * util: a per-process utilisation sample on that GPU (after its gpu line), as
 *   nvmlDeviceGetProcessUtilization returns it, in config order: smUtil is sm_percent (any
 *   32-bit value: drivers have reported more than 100), memUtil = encUtil = decUtil = 0,
 *   timeStamp is timestamp_us (NVML: CPU time in microseconds). The pid need not have a
 *   process line. At most 1024 util lines.
 * Both list calls follow NVML's two-call protocol; a NULL count pointer is
 *   INVALID_ARGUMENT. Processes: infos NULL with *infoCount > 0 is INVALID_ARGUMENT; else
 *   *infoCount below the number of processes gives NVML_ERROR_INSUFFICIENT_SIZE and sets
 *   it to that number (so *infoCount = 0, infos NULL asks how many: SUCCESS if none); else
 *   the processes are filled in and *infoCount set to their number. Utilisation: only
 *   samples with timeStamp > lastSeenTimeStamp count; none is NVML_ERROR_NOT_FOUND;
 *   utilization NULL or *processSamplesCount below their number gives INSUFFICIENT_SIZE
 *   and sets it to the number; else they are filled in and it is set to their number.
 * fail: the named entry point returns the code (1..2147483647) instead of doing its work,
 *   for every GPU ("-" or no index), or only for the GPU with that index; with <times>
 *   (1..4294967295), only for the first <times> calls it applies to (counted from init or
 *   fake_nvml_reload), then never. Device calls check "initialised?" and "valid handle?"
 *   first, then the failure, then their other arguments. Of several lines for a call, the
 *   first that applies wins. `fail nvmlInitWithFlags 9` makes pynvml's nvmlInit fail.
 *
 * int fake_nvml_reload(void), not an NVML call: while NVML is initialised, reads the node
 *   from $GPULET_FAKE_NVML again (so a test can change processes and samples, or make a GPU
 *   fail, between two calls), keeping the init count; handles stay valid for the GPU
 *   indices the new file still has. Returns NVML_SUCCESS; NVML_ERROR_UNINITIALIZED; or,
 *   for a file nvmlInit would refuse, nvmlInit's code, leaving NVML uninitialised.
 *
 * Not thread-safe: nvmlInit*(), nvmlShutdown() and fake_nvml_reload() must not run while
 * other calls do.
 */

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- NVML types as nvidia-ml-py 13 declares them (pynvml.py) --------------------- */

typedef int nvmlReturn_t; /* a C enum in nvml.h: int-sized; pynvml reads it as c_int */

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

#define NVML_NVLINK_MAX_LINKS 36
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16

/* nvmlIntNvLinkDeviceType_t */
#define NVML_NVLINK_DEVICE_TYPE_GPU 0x00u
#define NVML_NVLINK_DEVICE_TYPE_IBMNPU 0x01u
#define NVML_NVLINK_DEVICE_TYPE_SWITCH 0x02u
#define NVML_NVLINK_DEVICE_TYPE_UNKNOWN 0xFFu

/* pynvml.nvmlPciInfo_t, filled by nvmlDeviceGetPciInfo_v3 and ..NvLinkRemotePciInfo_v2 */
typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "pynvml nvmlPciInfo_t is 68 bytes");
_Static_assert(offsetof(nvmlPciInfo_t, busId) == 36, "pynvml nvmlPciInfo_t.busId at 36");

/* pynvml.c_nvmlMemory_t */
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;
_Static_assert(sizeof(nvmlMemory_t) == 24, "pynvml c_nvmlMemory_t is 24 bytes");

/* pynvml.c_nvmlMemory_v2_t; the caller sets version = pynvml.nvmlMemory_v2 (0x02000028) */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "pynvml c_nvmlMemory_v2_t is 40 bytes");
_Static_assert(offsetof(nvmlMemory_v2_t, total) == 8, "c_nvmlMemory_v2_t.total at 8");
#define NVML_MEMORY_V2 ((unsigned int)sizeof(nvmlMemory_v2_t) | (2u << 24))

/* pynvml.c_nvmlProcessInfo_v3_t (= _v2_t = c_nvmlProcessInfo_t): ..RunningProcesses_v2/3 */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory; /* bytes; VALUE_NOT_AVAILABLE_ULL when unknown */
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "pynvml c_nvmlProcessInfo_t is 24 bytes");
_Static_assert(offsetof(nvmlProcessInfo_t, usedGpuMemory) == 8, "usedGpuMemory at 8");
_Static_assert(offsetof(nvmlProcessInfo_t, gpuInstanceId) == 16, "gpuInstanceId at 16");

/* pynvml.c_nvmlProcessUtilizationSample_t, for nvmlDeviceGetProcessUtilization */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp; /* CPU time, microseconds */
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32,
               "pynvml c_nvmlProcessUtilizationSample_t is 32 bytes");
_Static_assert(offsetof(nvmlProcessUtilizationSample_t, smUtil) == 16, "smUtil at 16");

/* NVML_VALUE_NOT_AVAILABLE as an unsigned long long and as an unsigned int */
#define VALUE_NOT_AVAILABLE_ULL (~0ULL)
#define VALUE_NOT_AVAILABLE_UINT (~0u)

/* ---- the node read from GPULET_FAKE_NVML ------------------------------------------ */

#define MAX_GPUS 64
#define MAX_FAILS 16
#define MAX_PROCESSES 1024
#define MAX_SAMPLES 1024
#define LINE_SIZE 512
#define FN_NAME_SIZE 64

struct pci_addr {
    int known; /* 0: "-" in the config, reported as an all-zero nvmlPciInfo_t */
    unsigned int domain, bus, device, function;
};

struct nvlink {
    int present;
    unsigned int active;
    struct pci_addr remote;
    unsigned int remote_type;
};

/* The opaque struct behind nvmlDevice_t: handles point into g_node.gpus. */
struct nvmlDevice_st {
    int present;
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned long long memory_total;
    struct pci_addr pci;
    unsigned int minor;
    unsigned int mig;
    int nvlink_supported;
    struct nvlink links[NVML_NVLINK_MAX_LINKS];
};
typedef struct nvmlDevice_st *nvmlDevice_t;

struct process {
    unsigned int gpu;
    unsigned int pid;
    unsigned long long used; /* bytes, or VALUE_NOT_AVAILABLE_ULL */
};

struct util_sample {
    unsigned int gpu;
    unsigned int pid;
    unsigned int sm;
    unsigned long long timestamp;
};

struct injected_failure {
    char fn[FN_NAME_SIZE];
    nvmlReturn_t code;
    int gpu; /* -1: every GPU and the system-wide calls */
    int limited; /* 0: every call; 1: only while remaining > 0 */
    unsigned int remaining;
};

static struct {
    unsigned int refcount; /* nvmlInit*() minus nvmlShutdown(); 0: not initialised */
    int have_driver, have_cuda;
    char driver[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    int cuda;
    unsigned int gpu_count;
    struct nvmlDevice_st gpus[MAX_GPUS];
    unsigned int fail_count;
    struct injected_failure fails[MAX_FAILS];
    unsigned int process_count;
    struct process processes[MAX_PROCESSES];
    unsigned int sample_count;
    struct util_sample samples[MAX_SAMPLES];
} g_node;

/* ---- the entry points, each declared once --------------------------------------------- */

/* Every exported entry point that returns nvmlReturn_t: name and parameter list. The list
 * gives the prototypes below and the names a `fail` line may use. */
#define FAKE_NVML_ENTRY_POINTS(X)                                                          \
    X(nvmlInit_v2, (void))                                                                 \
    X(nvmlInitWithFlags, (unsigned int flags))                                             \
    X(nvmlShutdown, (void))                                                                \
    X(nvmlSystemGetDriverVersion, (char *version, unsigned int length))                    \
    X(nvmlSystemGetCudaDriverVersion, (int *cudaDriverVersion))                            \
    X(nvmlSystemGetCudaDriverVersion_v2, (int *cudaDriverVersion))                         \
    X(nvmlDeviceGetCount_v2, (unsigned int *deviceCount))                                  \
    X(nvmlDeviceGetHandleByIndex_v2, (unsigned int index, nvmlDevice_t *device))           \
    X(nvmlDeviceGetIndex, (nvmlDevice_t device, unsigned int *index))                      \
    X(nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int length))           \
    X(nvmlDeviceGetName, (nvmlDevice_t device, char *name, unsigned int length))           \
    X(nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory))                \
    X(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t device, nvmlMemory_v2_t *memory))          \
    X(nvmlDeviceGetPciInfo_v3, (nvmlDevice_t device, nvmlPciInfo_t *pci))                  \
    X(nvmlDeviceGetMinorNumber, (nvmlDevice_t device, unsigned int *minorNumber))          \
    X(nvmlDeviceGetMigMode,                                                                \
      (nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode))         \
    /* isActive: nvmlEnableState_t, an int-sized enum (pynvml passes a c_uint) */          \
    X(nvmlDeviceGetNvLinkState,                                                            \
      (nvmlDevice_t device, unsigned int link, unsigned int *isActive))                    \
    X(nvmlDeviceGetNvLinkRemotePciInfo_v2,                                                 \
      (nvmlDevice_t device, unsigned int link, nvmlPciInfo_t *pci))                        \
    /* pNvLinkDeviceType: nvmlIntNvLinkDeviceType_t (pynvml: c_uint) */                    \
    X(nvmlDeviceGetNvLinkRemoteDeviceType,                                                 \
      (nvmlDevice_t device, unsigned int link, unsigned int *pNvLinkDeviceType))             \
    X(nvmlDeviceGetComputeRunningProcesses_v2,                                             \
      (nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos))            \
    X(nvmlDeviceGetComputeRunningProcesses_v3,                                             \
      (nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos))            \
    X(nvmlDeviceGetProcessUtilization,                                                     \
      (nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,                   \
       unsigned int *processSamplesCount, unsigned long long lastSeenTimeStamp))

#define DECLARE_ENTRY_POINT(name, params) nvmlReturn_t name params;
FAKE_NVML_ENTRY_POINTS(DECLARE_ENTRY_POINT)
const char *nvmlErrorString(nvmlReturn_t result);
int fake_nvml_reload(void);

#define ENTRY_POINT_NAME(name, params) #name,
static const char *const k_entry_points[] = {FAKE_NVML_ENTRY_POINTS(ENTRY_POINT_NAME)};

/* ---- config parsing ---------------------------------------------------------------- */

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* The next blank-separated field of *cur, NUL-terminated in place; NULL at end of line. */
static char *next_field(char **cur)
{
    char *s = *cur;
    char *start;

    while (is_blank(*s))
        s++;
    if (*s == '\0') {
        *cur = s;
        return NULL;
    }
    start = s;
    while (*s != '\0' && !is_blank(*s))
        s++;
    if (*s != '\0')
        *s++ = '\0';
    *cur = s;
    return start;
}

/* Decimal digits only, no sign, at most max. */
static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    unsigned long long v = 0;

    if (s == NULL || *s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        unsigned int d;
        if (*s < '0' || *s > '9')
            return 0;
        d = (unsigned int)(*s - '0');
        if (d > max || v > (max - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* min_digits..max_digits hex digits (max_digits <= 8) at *s; advances *s past them. */
static int parse_hex(const char **s, int min_digits, int max_digits, unsigned int *out)
{
    unsigned int v = 0;
    int n = 0;

    while (n < max_digits && hex_digit((*s)[n]) >= 0) {
        v = v * 16 + (unsigned int)hex_digit((*s)[n]);
        n++;
    }
    if (n < min_digits)
        return 0;
    *s += n;
    *out = v;
    return 1;
}

/* "-" or DDDD[DDDD]:BB:DD.F */
static int parse_bus_id(const char *s, struct pci_addr *out)
{
    struct pci_addr a = {1, 0, 0, 0, 0};

    if (s == NULL)
        return 0;
    if (strcmp(s, "-") == 0) {
        memset(out, 0, sizeof(*out));
        return 1;
    }
    if (!parse_hex(&s, 4, 8, &a.domain) || *s != ':')
        return 0;
    s++;
    if (!parse_hex(&s, 2, 2, &a.bus) || *s != ':')
        return 0;
    s++;
    if (!parse_hex(&s, 2, 2, &a.device) || a.device > 0x1f || *s != '.')
        return 0;
    s++;
    if (!parse_hex(&s, 1, 1, &a.function) || a.function > 7 || *s != '\0')
        return 0;
    *out = a;
    return 1;
}

/* Copies src with its NUL into dst[size]; 0 if it does not fit. */
static int copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src) + 1;

    if (n > size)
        return 0;
    memcpy(dst, src, n);
    return 1;
}

static int parse_flag(const char *s, unsigned int *out)
{
    unsigned long long v;

    if (!parse_uint(s, 1, &v))
        return 0;
    *out = (unsigned int)v;
    return 1;
}

static const char *parse_gpu(char *rest)
{
    const char *f_index = next_field(&rest), *f_uuid = next_field(&rest);
    const char *f_mem = next_field(&rest), *f_bus = next_field(&rest);
    const char *f_minor = next_field(&rest), *f_mig = next_field(&rest);
    const char *f_nvlink = next_field(&rest);
    unsigned long long index, mem, minor;
    unsigned int nvlink;
    struct nvmlDevice_st *d;

    while (is_blank(*rest))
        rest++;
    if (*rest == '\0')
        return "gpu: expected <index> <uuid> <memory_total_bytes> <bus_id> <minor> <mig> "
               "<nvlink> <name...>";
    if (!parse_uint(f_index, MAX_GPUS - 1, &index))
        return "gpu: index must be a number below 64";
    d = &g_node.gpus[index];
    if (d->present)
        return "gpu: index given twice";
    if (!copy_str(d->uuid, sizeof(d->uuid), f_uuid))
        return "gpu: uuid longer than 95 characters";
    if (!copy_str(d->name, sizeof(d->name), rest))
        return "gpu: name longer than 95 characters";
    if (!parse_uint(f_mem, ~0ULL, &mem))
        return "gpu: memory_total_bytes must be a number";
    if (!parse_bus_id(f_bus, &d->pci) || !d->pci.known)
        return "gpu: bus id must look like 00000000:07:00.0";
    if (!parse_uint(f_minor, 0xffffffffULL, &minor))
        return "gpu: minor must be a number";
    if (!parse_flag(f_mig, &d->mig))
        return "gpu: mig must be 0 or 1";
    if (!parse_flag(f_nvlink, &nvlink))
        return "gpu: nvlink must be 0 or 1";
    d->present = 1;
    d->memory_total = mem;
    d->minor = (unsigned int)minor;
    d->nvlink_supported = (int)nvlink;
    if (index + 1 > g_node.gpu_count)
        g_node.gpu_count = (unsigned int)index + 1;
    return NULL;
}

static const char *parse_link(char *rest)
{
    const char *f_gpu = next_field(&rest), *f_link = next_field(&rest);
    const char *f_active = next_field(&rest), *f_remote = next_field(&rest);
    const char *f_type = next_field(&rest);
    unsigned long long gpu, link;
    struct nvlink *l;

    if (f_type == NULL || next_field(&rest) != NULL)
        return "link: expected <gpu_index> <link> <active> <remote_bus_id|-> <type>";
    if (!parse_uint(f_gpu, MAX_GPUS - 1, &gpu) || !g_node.gpus[gpu].present)
        return "link: gpu index has no gpu line above";
    if (!g_node.gpus[gpu].nvlink_supported)
        return "link: that gpu has nvlink 0";
    if (!parse_uint(f_link, NVML_NVLINK_MAX_LINKS - 1, &link))
        return "link: link must be a number below 36";
    l = &g_node.gpus[gpu].links[link];
    if (l->present)
        return "link: link given twice";
    if (!parse_flag(f_active, &l->active))
        return "link: active must be 0 or 1";
    if (!parse_bus_id(f_remote, &l->remote))
        return "link: remote bus id must be - or look like 00000000:07:00.0";
    if (strcmp(f_type, "gpu") == 0)
        l->remote_type = NVML_NVLINK_DEVICE_TYPE_GPU;
    else if (strcmp(f_type, "ibmnpu") == 0)
        l->remote_type = NVML_NVLINK_DEVICE_TYPE_IBMNPU;
    else if (strcmp(f_type, "switch") == 0)
        l->remote_type = NVML_NVLINK_DEVICE_TYPE_SWITCH;
    else if (strcmp(f_type, "unknown") == 0)
        l->remote_type = NVML_NVLINK_DEVICE_TYPE_UNKNOWN;
    else
        return "link: type must be gpu, ibmnpu, switch or unknown";
    l->present = 1;
    return NULL;
}

/* A gpu index that has a gpu line above. */
static int parse_gpu_ref(const char *s, unsigned int *out)
{
    unsigned long long gpu;

    if (!parse_uint(s, MAX_GPUS - 1, &gpu) || !g_node.gpus[gpu].present)
        return 0;
    *out = (unsigned int)gpu;
    return 1;
}

static const char *parse_process(char *rest)
{
    const char *f_gpu = next_field(&rest), *f_pid = next_field(&rest);
    const char *f_used = next_field(&rest);
    unsigned long long pid, used = VALUE_NOT_AVAILABLE_ULL;
    struct process *p;
    unsigned int gpu;

    if (f_used == NULL || next_field(&rest) != NULL)
        return "process: expected <gpu_index> <pid> <used_bytes|->";
    if (!parse_gpu_ref(f_gpu, &gpu))
        return "process: gpu index has no gpu line above";
    if (!parse_uint(f_pid, 0xffffffffULL, &pid))
        return "process: pid must be a 32-bit number";
    if (strcmp(f_used, "-") != 0 && !parse_uint(f_used, VALUE_NOT_AVAILABLE_ULL - 1, &used))
        return "process: used_bytes must be a number below 2^64-1, or -";
    if (g_node.process_count == MAX_PROCESSES)
        return "process: more than 1024 process lines";
    p = &g_node.processes[g_node.process_count++];
    p->gpu = gpu;
    p->pid = (unsigned int)pid;
    p->used = used;
    return NULL;
}

static const char *parse_util(char *rest)
{
    const char *f_gpu = next_field(&rest), *f_pid = next_field(&rest);
    const char *f_sm = next_field(&rest), *f_time = next_field(&rest);
    unsigned long long pid, sm, timestamp;
    struct util_sample *u;
    unsigned int gpu;

    if (f_time == NULL || next_field(&rest) != NULL)
        return "util: expected <gpu_index> <pid> <sm_percent> <timestamp_us>";
    if (!parse_gpu_ref(f_gpu, &gpu))
        return "util: gpu index has no gpu line above";
    if (!parse_uint(f_pid, 0xffffffffULL, &pid))
        return "util: pid must be a 32-bit number";
    if (!parse_uint(f_sm, 0xffffffffULL, &sm))
        return "util: sm_percent must be a 32-bit number";
    if (!parse_uint(f_time, ~0ULL, &timestamp))
        return "util: timestamp_us must be a number";
    if (g_node.sample_count == MAX_SAMPLES)
        return "util: more than 1024 util lines";
    u = &g_node.samples[g_node.sample_count++];
    u->gpu = gpu;
    u->pid = (unsigned int)pid;
    u->sm = (unsigned int)sm;
    u->timestamp = timestamp;
    return NULL;
}

static const char *parse_fail(char *rest)
{
    const char *f_fn = next_field(&rest), *f_code = next_field(&rest);
    const char *f_gpu = next_field(&rest), *f_times = next_field(&rest);
    unsigned long long code, gpu = 0, times = 0;
    int every_gpu = f_gpu == NULL || strcmp(f_gpu, "-") == 0;
    struct injected_failure *f;
    size_t i;
    int known = 0;

    if (f_code == NULL || next_field(&rest) != NULL)
        return "fail: expected <entry point> <code> [<gpu_index>|- [<times>]]";
    for (i = 0; i < sizeof(k_entry_points) / sizeof(k_entry_points[0]); i++)
        known |= strcmp(f_fn, k_entry_points[i]) == 0;
    if (!known)
        return "fail: not an entry point of this library";
    if (!parse_uint(f_code, 0x7fffffffULL, &code) || code == 0)
        return "fail: code must be a non-zero nvmlReturn_t";
    if (!every_gpu && !parse_uint(f_gpu, MAX_GPUS - 1, &gpu))
        return "fail: gpu index must be - or a number below 64";
    if (f_times != NULL && (!parse_uint(f_times, 0xffffffffULL, &times) || times == 0))
        return "fail: times must be a number from 1 to 4294967295";
    if (g_node.fail_count == MAX_FAILS)
        return "fail: more than 16 fail lines";
    f = &g_node.fails[g_node.fail_count++];
    (void)copy_str(f->fn, sizeof(f->fn), f_fn); /* fits: it is one of k_entry_points */
    f->code = (nvmlReturn_t)code;
    f->gpu = every_gpu ? -1 : (int)gpu;
    f->limited = f_times != NULL;
    f->remaining = (unsigned int)times;
    return NULL;
}

static const char *parse_line(char *line)
{
    char *rest = line;
    const char *directive = next_field(&rest);
    const char *value;
    unsigned long long cuda;

    if (directive == NULL || directive[0] == '#')
        return NULL;
    if (strcmp(directive, "gpu") == 0)
        return parse_gpu(rest);
    if (strcmp(directive, "link") == 0)
        return parse_link(rest);
    if (strcmp(directive, "fail") == 0)
        return parse_fail(rest);
    if (strcmp(directive, "process") == 0)
        return parse_process(rest);
    if (strcmp(directive, "util") == 0)
        return parse_util(rest);
    value = next_field(&rest);
    if (value == NULL || next_field(&rest) != NULL)
        return "expected: <directive> <value>";
    if (strcmp(directive, "driver") == 0) {
        if (!copy_str(g_node.driver, sizeof(g_node.driver), value))
            return "driver: version longer than 79 characters";
        g_node.have_driver = 1;
        return NULL;
    }
    if (strcmp(directive, "cuda") == 0) {
        if (!parse_uint(value, 0x7fffffffULL, &cuda))
            return "cuda: version must be a number such as 13000";
        g_node.cuda = (int)cuda;
        g_node.have_cuda = 1;
        return NULL;
    }
    return "unknown directive (driver, cuda, gpu, link, process, util, fail)";
}

static void config_error(const char *path, unsigned int line, const char *problem)
{
    fprintf(stderr, "fake_nvml: %s:%u: %s\n", path, line, problem);
}

/* Fills g_node from $GPULET_FAKE_NVML. */
static nvmlReturn_t load_config(void)
{
    const char *path = getenv("GPULET_FAKE_NVML");
    char line[LINE_SIZE];
    unsigned int lineno = 0;
    const char *problem = NULL;
    FILE *fp;
    unsigned int i;

    memset(&g_node, 0, sizeof(g_node));
    if (path == NULL || path[0] == '\0')
        return NVML_ERROR_DRIVER_NOT_LOADED;
    fp = fopen(path, "r");
    if (fp == NULL)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    while (problem == NULL && fgets(line, sizeof(line), fp) != NULL) {
        size_t n = strlen(line);
        lineno++;
        if (n > 0 && line[n - 1] != '\n' && !feof(fp)) {
            problem = "line longer than 511 characters";
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || is_blank(line[n - 1])))
            line[--n] = '\0';
        problem = parse_line(line);
    }
    if (problem == NULL && ferror(fp)) {
        fclose(fp);
        return NVML_ERROR_DRIVER_NOT_LOADED; /* e.g. a directory */
    }
    fclose(fp);
    if (problem != NULL) {
        config_error(path, lineno, problem);
        return NVML_ERROR_UNKNOWN;
    }
    lineno = 0; /* problems below concern the whole file */
    if (!g_node.have_driver)
        problem = "no driver line";
    else if (!g_node.have_cuda)
        problem = "no cuda line";
    for (i = 0; problem == NULL && i < g_node.gpu_count; i++)
        if (!g_node.gpus[i].present)
            problem = "gpu indices must be 0..N-1 without gaps";
    if (problem != NULL) {
        config_error(path, lineno, problem);
        return NVML_ERROR_UNKNOWN;
    }
    return NVML_SUCCESS;
}

/* ---- common checks ------------------------------------------------------------------ */

/* The code a `fail` line gives fn for this GPU (-1: a system-wide call), else success. */
static nvmlReturn_t injected(const char *fn, int gpu)
{
    unsigned int i;

    for (i = 0; i < g_node.fail_count; i++) {
        struct injected_failure *f = &g_node.fails[i];
        if (strcmp(f->fn, fn) != 0 || (f->gpu >= 0 && f->gpu != gpu))
            continue;
        if (f->limited && f->remaining == 0)
            continue; /* spent */
        if (f->limited)
            f->remaining--;
        return f->code;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t enter_system(const char *fn)
{
    if (g_node.refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    return injected(fn, -1);
}

static nvmlReturn_t enter_device(const char *fn, nvmlDevice_t device,
                                 const struct nvmlDevice_st **out)
{
    unsigned int i;

    if (g_node.refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    for (i = 0; i < g_node.gpu_count; i++) {
        if (device == &g_node.gpus[i]) {
            *out = device;
            return injected(fn, (int)i);
        }
    }
    return NVML_ERROR_INVALID_ARGUMENT;
}

static nvmlReturn_t enter_link(const char *fn, nvmlDevice_t device, unsigned int link,
                               const struct nvlink **out)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(fn, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (!d->nvlink_supported)
        return NVML_ERROR_NOT_SUPPORTED;
    if (link >= NVML_NVLINK_MAX_LINKS || !d->links[link].present)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = &d->links[link];
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *dst, unsigned int length, const char *src)
{
    size_t n = strlen(src) + 1;

    if (dst == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (length < n)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n);
    return NVML_SUCCESS;
}

static void fill_pci(nvmlPciInfo_t *out, const struct pci_addr *a)
{
    memset(out, 0, sizeof(*out));
    if (!a->known)
        return;
    out->domain = a->domain;
    out->bus = a->bus;
    out->device = a->device;
    snprintf(out->busId, sizeof(out->busId), "%08X:%02X:%02X.%X", a->domain, a->bus,
             a->device, a->function);
    snprintf(out->busIdLegacy, sizeof(out->busIdLegacy), "%04X:%02X:%02X.%X",
             a->domain & 0xffffu, a->bus, a->device, a->function);
}

/* ---- exported entry points ---------------------------------------------------------- */

static nvmlReturn_t init(const char *fn)
{
    nvmlReturn_t rc;

    if (g_node.refcount > 0) {
        rc = injected(fn, -1);
        if (rc == NVML_SUCCESS)
            g_node.refcount++;
        return rc;
    }
    rc = load_config();
    if (rc == NVML_SUCCESS)
        rc = injected(fn, -1);
    if (rc != NVML_SUCCESS) {
        memset(&g_node, 0, sizeof(g_node));
        return rc;
    }
    g_node.refcount = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return init(__func__); }

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS, NO_ATTACH, FORCE_INIT change nothing here */
    return init(__func__);
}

int fake_nvml_reload(void)
{
    unsigned int refcount = g_node.refcount;
    nvmlReturn_t rc;

    if (refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    rc = load_config();
    if (rc != NVML_SUCCESS) {
        memset(&g_node, 0, sizeof(g_node));
        return rc;
    }
    g_node.refcount = refcount;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t rc = enter_system(__func__);

    if (rc != NVML_SUCCESS)
        return rc;
    if (--g_node.refcount == 0)
        memset(&g_node, 0, sizeof(g_node));
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "vGPU operation not available while ECC is enabled";
    case 23: return "Insufficient resources";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter_system(__func__);

    return rc != NVML_SUCCESS ? rc : copy_out(version, length, g_node.driver);
}

static nvmlReturn_t get_cuda_version(const char *fn, int *cudaDriverVersion)
{
    nvmlReturn_t rc = enter_system(fn);

    if (rc != NVML_SUCCESS)
        return rc;
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = g_node.cuda;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    return get_cuda_version(__func__, cudaDriverVersion);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return get_cuda_version(__func__, cudaDriverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t rc = enter_system(__func__);

    if (rc != NVML_SUCCESS)
        return rc;
    if (deviceCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = g_node.gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc;

    if (g_node.refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (index >= g_node.gpu_count || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = injected(__func__, (int)index);
    if (rc != NVML_SUCCESS)
        return rc;
    *device = &g_node.gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (index == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)(d - g_node.gpus);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    return rc != NVML_SUCCESS ? rc : copy_out(uuid, length, d->uuid);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    return rc != NVML_SUCCESS ? rc : copy_out(name, length, d->name);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = d->memory_total;
    memory->free = d->memory_total;
    memory->used = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (memory == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != NVML_MEMORY_V2)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = d->memory_total;
    memory->reserved = 0;
    memory->free = d->memory_total;
    memory->used = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(pci, &d->pci);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (minorNumber == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = d->minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                  unsigned int *pendingMode)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);

    if (rc != NVML_SUCCESS)
        return rc;
    if (currentMode == NULL || pendingMode == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *currentMode = d->mig;
    *pendingMode = d->mig;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                      unsigned int *isActive)
{
    const struct nvlink *l = NULL;
    nvmlReturn_t rc = enter_link(__func__, device, link, &l);

    if (rc != NVML_SUCCESS)
        return rc;
    if (isActive == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *isActive = l->active;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link,
                                                 nvmlPciInfo_t *pci)
{
    const struct nvlink *l = NULL;
    nvmlReturn_t rc = enter_link(__func__, device, link, &l);

    if (rc != NVML_SUCCESS)
        return rc;
    if (pci == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(pci, &l->remote);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link,
                                                 unsigned int *pNvLinkDeviceType)
{
    const struct nvlink *l = NULL;
    nvmlReturn_t rc = enter_link(__func__, device, link, &l);

    if (rc != NVML_SUCCESS)
        return rc;
    if (pNvLinkDeviceType == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *pNvLinkDeviceType = l->remote_type;
    return NVML_SUCCESS;
}

static nvmlReturn_t get_processes(const char *fn, nvmlDevice_t device,
                                  unsigned int *infoCount, nvmlProcessInfo_t *infos)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(fn, device, &d);
    unsigned int gpu, i, n = 0;

    if (rc != NVML_SUCCESS)
        return rc;
    if (infoCount == NULL || (infos == NULL && *infoCount != 0))
        return NVML_ERROR_INVALID_ARGUMENT;
    gpu = (unsigned int)(d - g_node.gpus);
    for (i = 0; i < g_node.process_count; i++)
        n += g_node.processes[i].gpu == gpu;
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i = 0, n = 0; i < g_node.process_count; i++) {
        const struct process *p = &g_node.processes[i];
        if (p->gpu != gpu)
            continue;
        infos[n].pid = p->pid;
        infos[n].usedGpuMemory = p->used;
        infos[n].gpuInstanceId = VALUE_NOT_AVAILABLE_UINT;
        infos[n].computeInstanceId = VALUE_NOT_AVAILABLE_UINT;
        n++;
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos)
{
    return get_processes(__func__, device, infoCount, infos);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                     unsigned int *infoCount,
                                                     nvmlProcessInfo_t *infos)
{
    return get_processes(__func__, device, infoCount, infos);
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp)
{
    const struct nvmlDevice_st *d = NULL;
    nvmlReturn_t rc = enter_device(__func__, device, &d);
    unsigned int gpu, i, n = 0;

    if (rc != NVML_SUCCESS)
        return rc;
    if (processSamplesCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    gpu = (unsigned int)(d - g_node.gpus);
    for (i = 0; i < g_node.sample_count; i++)
        n += g_node.samples[i].gpu == gpu && g_node.samples[i].timestamp > lastSeenTimeStamp;
    if (n == 0)
        return NVML_ERROR_NOT_FOUND;
    if (utilization == NULL || *processSamplesCount < n) {
        *processSamplesCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (i = 0, n = 0; i < g_node.sample_count; i++) {
        const struct util_sample *u = &g_node.samples[i];
        if (u->gpu != gpu || u->timestamp <= lastSeenTimeStamp)
            continue;
        memset(&utilization[n], 0, sizeof(utilization[n]));
        utilization[n].pid = u->pid;
        utilization[n].timeStamp = u->timestamp;
        utilization[n].smUtil = u->sm;
        n++;
    }
    *processSamplesCount = n;
    return NVML_SUCCESS;
}
