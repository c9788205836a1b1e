/*
 * libgpulet-limiter: internal declarations.
 *
 * Every driver entry point the limiter replaces or calls is listed once, below, in
 * GL_HOOKED (replaced: our function of the same name is exported) or GL_USED (only called).
 * hooks.c turns the two lists into the one table that dlsym and cuGetProcAddress consult.
 */
#ifndef GPULET_LIMITER_H
#define GPULET_LIMITER_H

#include <stdint.h>

#include "cuda_api.h"
#include "glibc_compat.h"
#include "region.h"

#define GL_EXPORT __attribute__((visibility("default")))
/* For code that runs inside dlsym, which a sanitizer runtime calls before it has set up its
 * shadow memory: such code must not be instrumented. */
#define GL_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined")))

enum gl_lib { GL_LIB_CUDA, GL_LIB_NVML };

/* X(lib, return type, name, parameter list) */
#define GL_HOOKED(X)                                                                            \
    X(CUDA, CUresult, cuGetProcAddress,                                                         \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags))                      \
    X(CUDA, CUresult, cuGetProcAddress_v2,                                                      \
      (const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,                       \
       CUdriverProcAddressQueryResult *symbolStatus))                                           \
    X(CUDA, CUresult, cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytesize))                     \
    X(CUDA, CUresult, cuMemAllocPitch_v2,                                                       \
      (CUdeviceptr * dptr, size_t *pitch, size_t width, size_t height, unsigned int elem))      \
    X(CUDA, CUresult, cuMemAllocManaged,                                                        \
      (CUdeviceptr * dptr, size_t bytesize, unsigned int flags))                                \
    X(CUDA, CUresult, cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytesize, CUstream stream))  \
    X(CUDA, CUresult, cuMemAllocAsync_ptsz,                                                     \
      (CUdeviceptr * dptr, size_t bytesize, CUstream stream))                                   \
    X(CUDA, CUresult, cuMemAllocFromPoolAsync,                                                  \
      (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream))                \
    X(CUDA, CUresult, cuMemAllocFromPoolAsync_ptsz,                                             \
      (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream))                \
    X(CUDA, CUresult, cuMemFree_v2, (CUdeviceptr dptr))                                         \
    X(CUDA, CUresult, cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream))                      \
    X(CUDA, CUresult, cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream stream))                 \
    X(CUDA, CUresult, cuMemCreate,                                                              \
      (CUmemGenericAllocationHandle * handle, size_t size, const CUmemAllocationProp *prop,     \
       unsigned long long flags))                                                               \
    X(CUDA, CUresult, cuMemRelease, (CUmemGenericAllocationHandle handle))                      \
    X(CUDA, CUresult, cuArrayCreate_v2, (CUarray * array, const CUDA_ARRAY_DESCRIPTOR *desc))   \
    X(CUDA, CUresult, cuArray3DCreate_v2,                                                       \
      (CUarray * array, const CUDA_ARRAY3D_DESCRIPTOR *desc))                                   \
    X(CUDA, CUresult, cuArrayDestroy, (CUarray array))                                          \
    X(CUDA, CUresult, cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes))               \
    X(CUDA, CUresult, cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev))                       \
    X(CUDA, CUresult, cuLaunchKernel,                                                           \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,        \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,    \
       void **extra))                                                                           \
    X(CUDA, CUresult, cuLaunchKernel_ptsz,                                                      \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,        \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,    \
       void **extra))                                                                           \
    X(CUDA, CUresult, cuLaunchKernelEx,                                                         \
      (const CUlaunchConfig *config, CUfunction f, void **params, void **extra))                \
    X(CUDA, CUresult, cuLaunchKernelEx_ptsz,                                                    \
      (const CUlaunchConfig *config, CUfunction f, void **params, void **extra))                \
    X(CUDA, CUresult, cuLaunchCooperativeKernel,                                                \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,        \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params))   \
    X(CUDA, CUresult, cuLaunchCooperativeKernel_ptsz,                                           \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,        \
       unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params))   \
    X(CUDA, CUresult, cuGraphLaunch, (CUgraphExec exec, CUstream stream))                       \
    X(CUDA, CUresult, cuGraphLaunch_ptsz, (CUgraphExec exec, CUstream stream))                  \
    X(NVML, nvmlReturn_t, nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t * memory)) \
    X(NVML, nvmlReturn_t, nvmlDeviceGetMemoryInfo_v2,                                           \
      (nvmlDevice_t device, nvmlMemory_v2_t * memory))

#define GL_USED(X)                                                                              \
    X(CUDA, CUresult, cuCtxGetDevice, (CUdevice * device))                                      \
    X(CUDA, CUresult, cuDeviceGetUuid, (CUuuid * uuid, CUdevice dev))                           \
    X(CUDA, CUresult, cuDeviceGetUuid_v2, (CUuuid * uuid, CUdevice dev))                        \
    X(CUDA, CUresult, cuMemGetAddressRange_v2,                                                  \
      (CUdeviceptr * base, size_t *size, CUdeviceptr dptr))                                     \
    X(CUDA, CUresult, cuArrayGetMemoryRequirements,                                             \
      (CUDA_ARRAY_MEMORY_REQUIREMENTS * req, CUarray array, CUdevice dev))                      \
    X(CUDA, CUresult, cuEventCreate, (CUevent * event, unsigned int flags))                     \
    X(CUDA, CUresult, cuEventRecord, (CUevent event, CUstream stream))                          \
    X(CUDA, CUresult, cuEventRecord_ptsz, (CUevent event, CUstream stream))                     \
    X(CUDA, CUresult, cuEventQuery, (CUevent event))                                            \
    X(CUDA, CUresult, cuEventElapsedTime, (float *ms, CUevent start, CUevent end))              \
    X(CUDA, CUresult, cuStreamIsCapturing, (CUstream stream, int *status))                       \
    X(CUDA, CUresult, cuStreamIsCapturing_ptsz, (CUstream stream, int *status))                  \
    X(CUDA, CUresult, cuThreadExchangeStreamCaptureMode, (int *mode))                           \
    X(NVML, nvmlReturn_t, nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int n))

#define GL_DECLARE(lib, ret, name, params)                                                      \
    GL_EXPORT ret name params;                                                                  \
    extern ret(*real_##name) params;
#define GL_DECLARE_USED(lib, ret, name, params) extern ret(*real_##name) params;
GL_HOOKED(GL_DECLARE)
GL_USED(GL_DECLARE_USED)
#undef GL_DECLARE
#undef GL_DECLARE_USED

/* ---- init.c: state, configuration, the region ------------------------------------------- */

struct gl_state {
    int active; /* limits were read: enforce them */
    int pacing; /* some device has a core share below 100 */
    struct gpulet_limits limits;
    char dir[512];
};
extern struct gl_state gl;

/* Make sure the real entry points are known (idempotent, lock-free, safe from any thread). */
void gl_resolve(void);
/* The region handle, attached to this process (lazily); never NULL once active. */
struct gpulet_handle *gl_region(void);
/* The real function, resolving the table first if this is the first call to reach us. */
#define GL_REAL(name) (real_##name ? real_##name : (gl_resolve(), real_##name))

/* Limits index of a CUDA device, or -1 when the device is not limited. */
int gl_cu_index(CUdevice dev);
/* Limits index of the current context's device, or -1. */
int gl_current_index(CUdevice *dev_out);
/* One structured line on stderr: "gpulet-limiter: event=... key=value ...". */
void gl_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- hooks.c: the table ----------------------------------------------------------------- */

/* Our replacement for a real entry point, or NULL when it is not one we replace. */
void *gl_substitute(void *real);
/* The real dlsym, found with dlvsym. */
void *gl_real_dlsym(void *handle, const char *name);
/* Fill every real_* pointer of `lib` from `handle`. */
void gl_fill_table(int lib, void *handle);

/* ---- memory.c ----------------------------------------------------------------------------- */
void gl_memory_forget_all(void); /* a forked child owns none of its parent's allocations */

/* ---- compute.c ---------------------------------------------------------------------------- */
void gl_compute_forget_all(void);

#endif
