/*
 * Memory: a hard cap per GPU, shared by every process of the container.
 *
 * Every allocation is charged before it is made (the region refuses what would pass the
 * cap) and, once the driver has answered, corrected to what the driver reserved
 * (cuMemGetAddressRange, cuArrayGetMemoryRequirements). Each charge is remembered by
 * pointer or handle in a process-local table so that its free gives back exactly that.
 * No lock is held across a driver call: the region's lock is taken inside reserve/release
 * only, this file's table lock only around table operations.
 */
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "limiter.h"

struct charge {
    uint64_t key; /* device pointer, allocation handle or CUarray; 0: empty */
    uint64_t bytes;
    int32_t index; /* limits index */
    int32_t dead;  /* tombstone */
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct charge *charges;
static size_t capacity, filled; /* filled counts tombstones too */

static size_t slot_of(uint64_t key, size_t cap) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static int grow(void) {
    size_t cap = capacity ? capacity * 2 : 1024;
    struct charge *fresh = mmap(NULL, cap * sizeof *fresh, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fresh == MAP_FAILED)
        return -1;
    size_t live = 0;
    for (size_t i = 0; i < capacity; i++) {
        if (!charges[i].key || charges[i].dead)
            continue;
        size_t j = slot_of(charges[i].key, cap);
        while (fresh[j].key)
            j = (j + 1) & (cap - 1);
        fresh[j] = charges[i];
        live++;
    }
    if (charges)
        munmap(charges, capacity * sizeof *charges);
    charges = fresh;
    capacity = cap;
    filled = live;
    return 0;
}

static int remember(uint64_t key, int index, uint64_t bytes) {
    pthread_mutex_lock(&table_lock);
    int rc = 0;
    if ((filled + 1) * 2 > capacity && grow() != 0) {
        rc = -1;
    } else {
        size_t j = slot_of(key, capacity);
        while (charges[j].key && !charges[j].dead && charges[j].key != key)
            j = (j + 1) & (capacity - 1);
        if (!charges[j].key)
            filled++;
        charges[j] = (struct charge){key, bytes, index, 0};
    }
    pthread_mutex_unlock(&table_lock);
    return rc;
}

/* Take the charge of `key` out of the table; 0 when it was not charged. */
static int forget(uint64_t key, struct charge *out) {
    int found = 0;
    pthread_mutex_lock(&table_lock);
    if (capacity) {
        size_t j = slot_of(key, capacity);
        while (charges[j].key) {
            if (charges[j].key == key && !charges[j].dead) {
                *out = charges[j];
                charges[j].dead = 1;
                found = 1;
                break;
            }
            j = (j + 1) & (capacity - 1);
        }
    }
    pthread_mutex_unlock(&table_lock);
    return found;
}

void gl_memory_forget_all(void) {
    pthread_mutex_init(&table_lock, NULL);
    if (charges)
        munmap(charges, capacity * sizeof *charges);
    charges = NULL;
    capacity = filled = 0;
}

static uint64_t cap_of(int index) { return gl.limits.dev[index].memory_bytes; }

/* Charge `bytes` up front; 0 or CUDA_ERROR_OUT_OF_MEMORY. */
static CUresult reserve(int index, uint64_t bytes) {
    if (gpulet_region_reserve(gl_region(), (uint32_t)index, bytes, cap_of(index), NULL) != 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    return CUDA_SUCCESS;
}

static void give_back(int index, uint64_t bytes) {
    gpulet_region_release(gl_region(), (uint32_t)index, bytes);
}

/*
 * After a successful allocation charged `charged`: correct to `actual` (what the driver
 * reserved) and remember it. Returns CUDA_ERROR_OUT_OF_MEMORY when the correction does not
 * fit; the caller then frees the allocation.
 */
static CUresult settle(uint64_t key, int index, uint64_t charged, uint64_t actual) {
    if (actual > charged) {
        if (reserve(index, actual - charged) != CUDA_SUCCESS) {
            give_back(index, charged);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    } else if (actual < charged) {
        give_back(index, charged - actual);
    }
    if (remember(key, index, actual) != 0) {
        give_back(index, actual);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

static uint64_t reserved_size(CUdeviceptr ptr, uint64_t fallback) {
    CUdeviceptr base = 0;
    size_t size = 0;
    if (GL_REAL(cuMemGetAddressRange_v2) &&
        real_cuMemGetAddressRange_v2(&base, &size, ptr) == CUDA_SUCCESS && size > fallback)
        return size;
    return fallback;
}

static void release_key(uint64_t key) {
    struct charge c;
    if (forget(key, &c))
        give_back(c.index, c.bytes);
}

/* ---- linear allocations ----------------------------------------------------------------- */

/* The shape of every linear allocation hook: charge, call, settle or undo. */
#define GL_LINEAR_ALLOC(index, bytes, call, dptr, free_call)                                    \
    do {                                                                                        \
        if ((index) < 0)                                                                        \
            return (call);                                                                      \
        if (reserve((index), (bytes)) != CUDA_SUCCESS)                                          \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                    \
        CUresult rc_ = (call);                                                                  \
        if (rc_ != CUDA_SUCCESS) {                                                              \
            give_back((index), (bytes));                                                        \
            return rc_;                                                                         \
        }                                                                                       \
        if (settle(*(dptr), (index), (bytes), reserved_size(*(dptr), (bytes))) != CUDA_SUCCESS) { \
            (void)(free_call);                                                                  \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                    \
        }                                                                                       \
        return CUDA_SUCCESS;                                                                    \
    } while (0)

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    if (!GL_REAL(cuMemAlloc_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!dptr || !bytesize)
        return real_cuMemAlloc_v2(dptr, bytesize);
    int index = gl_current_index(NULL);
    GL_LINEAR_ALLOC(index, bytesize, real_cuMemAlloc_v2(dptr, bytesize), dptr,
                    GL_REAL(cuMemFree_v2)(*dptr));
}

CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                            unsigned int elem) {
    if (!GL_REAL(cuMemAllocPitch_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!dptr || !pitch || !width || !height || height > UINT64_MAX / width)
        return real_cuMemAllocPitch_v2(dptr, pitch, width, height, elem);
    int index = gl_current_index(NULL);
    GL_LINEAR_ALLOC(index, (uint64_t)width * height,
                    real_cuMemAllocPitch_v2(dptr, pitch, width, height, elem), dptr,
                    GL_REAL(cuMemFree_v2)(*dptr));
}

CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    if (!GL_REAL(cuMemAllocManaged))
        return CUDA_ERROR_NOT_INITIALIZED;
    if (!dptr || !bytesize)
        return real_cuMemAllocManaged(dptr, bytesize, flags);
    int index = gl_current_index(NULL);
    GL_LINEAR_ALLOC(index, bytesize, real_cuMemAllocManaged(dptr, bytesize, flags), dptr,
                    GL_REAL(cuMemFree_v2)(*dptr));
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
    if (!GL_REAL(cuMemFree_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuMemFree_v2(dptr);
    if (rc == CUDA_SUCCESS && dptr && gl.active)
        release_key(dptr);
    return rc;
}

/* Stream-ordered allocations: the pointer is valid at once; the memory is charged for its
 * requested size from the call to the free (a pool's cached reserve is not, see
 * docs/limiter.md). */
#define GL_ASYNC_ALLOC(real, args, free_real)                                                   \
    do {                                                                                        \
        if (!GL_REAL(real))                                                                     \
            return CUDA_ERROR_NOT_INITIALIZED;                                                  \
        if (!dptr || !bytesize)                                                                 \
            return real_##real args;                                                            \
        int index = gl_current_index(NULL);                                                     \
        GL_LINEAR_ALLOC(index, bytesize, real_##real args, dptr,                                \
                        GL_REAL(free_real)(*dptr, stream));                                     \
    } while (0)

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    GL_ASYNC_ALLOC(cuMemAllocAsync, (dptr, bytesize, stream), cuMemFreeAsync);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream stream) {
    GL_ASYNC_ALLOC(cuMemAllocAsync_ptsz, (dptr, bytesize, stream), cuMemFreeAsync_ptsz);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                 CUstream stream) {
    GL_ASYNC_ALLOC(cuMemAllocFromPoolAsync, (dptr, bytesize, pool, stream), cuMemFreeAsync);
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                      CUstream stream) {
    GL_ASYNC_ALLOC(cuMemAllocFromPoolAsync_ptsz, (dptr, bytesize, pool, stream),
                   cuMemFreeAsync_ptsz);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream) {
    if (!GL_REAL(cuMemFreeAsync))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuMemFreeAsync(dptr, stream);
    if (rc == CUDA_SUCCESS && dptr && gl.active)
        release_key(dptr);
    return rc;
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream) {
    if (!GL_REAL(cuMemFreeAsync_ptsz))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuMemFreeAsync_ptsz(dptr, stream);
    if (rc == CUDA_SUCCESS && dptr && gl.active)
        release_key(dptr);
    return rc;
}

/* ---- virtual memory management: physical memory is charged at cuMemCreate ---------------- */

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                     const CUmemAllocationProp *prop, unsigned long long flags) {
    if (!GL_REAL(cuMemCreate))
        return CUDA_ERROR_NOT_INITIALIZED;
    int index = -1;
    if (gl.active && handle && prop && size) {
        if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE)
            index = gl_cu_index(prop->location.id);
        else
            index = gl_current_index(NULL);
    }
    if (index < 0)
        return real_cuMemCreate(handle, size, prop, flags);
    if (reserve(index, size) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = real_cuMemCreate(handle, size, prop, flags);
    if (rc != CUDA_SUCCESS) {
        give_back(index, size);
        return rc;
    }
    if (settle(*handle, index, size, size) != CUDA_SUCCESS) {
        GL_REAL(cuMemRelease)(*handle);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    if (!GL_REAL(cuMemRelease))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuMemRelease(handle);
    if (rc == CUDA_SUCCESS && gl.active)
        release_key(handle);
    return rc;
}

/* ---- arrays --------------------------------------------------------------------------------- */

static uint64_t element_bytes(int format) {
    switch (format) {
    case 0x01: case 0x08: return 1;
    case 0x02: case 0x09: case 0x10: return 2;
    case 0x03: case 0x0a: case 0x20: return 4;
    default: return 16; /* newer formats: charge high, settle corrects */
    }
}

static uint64_t array_estimate(size_t w, size_t h, size_t d, int format, unsigned channels) {
    uint64_t total = element_bytes(format) * (channels ? channels : 1);
    const size_t dims[3] = {w ? w : 1, h ? h : 1, d ? d : 1};
    for (int i = 0; i < 3; i++) {
        if (total > UINT64_MAX / dims[i])
            return UINT64_MAX;
        total *= dims[i];
    }
    return total;
}

#define GL_ARRAY_ALLOC(call)                                                                    \
    do {                                                                                        \
        CUdevice dev = -1;                                                                      \
        int index = gl.active && array && desc ? gl_current_index(&dev) : -1;                   \
        if (index < 0)                                                                          \
            return (call);                                                                      \
        uint64_t estimate = array_estimate(GL_ARRAY_DIMS, desc->Format, desc->NumChannels);     \
        if (reserve(index, estimate) != CUDA_SUCCESS)                                           \
            return CUDA_ERROR_OUT_OF_MEMORY;                                                    \
        return array_alloc(array, index, estimate, (call), dev);                                \
    } while (0)

static CUresult array_alloc(CUarray *array, int index, uint64_t estimate, CUresult rc,
                            CUdevice dev) {
    if (rc != CUDA_SUCCESS) {
        give_back(index, estimate);
        return rc;
    }
    uint64_t actual = estimate;
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    memset(&req, 0, sizeof req);
    if (GL_REAL(cuArrayGetMemoryRequirements) &&
        real_cuArrayGetMemoryRequirements(&req, *array, dev) == CUDA_SUCCESS && req.size)
        actual = req.size;
    if (settle((uint64_t)(uintptr_t)*array, index, estimate, actual) != CUDA_SUCCESS) {
        GL_REAL(cuArrayDestroy)(*array);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

CUresult cuArrayCreate_v2(CUarray *array, const CUDA_ARRAY_DESCRIPTOR *desc) {
    if (!GL_REAL(cuArrayCreate_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
#define GL_ARRAY_DIMS desc->Width, desc->Height, 1
    GL_ARRAY_ALLOC(real_cuArrayCreate_v2(array, desc));
#undef GL_ARRAY_DIMS
}

CUresult cuArray3DCreate_v2(CUarray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    if (!GL_REAL(cuArray3DCreate_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
#define GL_ARRAY_DIMS desc->Width, desc->Height, desc->Depth
    GL_ARRAY_ALLOC(real_cuArray3DCreate_v2(array, desc));
#undef GL_ARRAY_DIMS
}

CUresult cuArrayDestroy(CUarray array) {
    if (!GL_REAL(cuArrayDestroy))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuArrayDestroy(array);
    if (rc == CUDA_SUCCESS && array && gl.active)
        release_key((uint64_t)(uintptr_t)array);
    return rc;
}

/* ---- what the container is told ------------------------------------------------------------ */

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    if (!GL_REAL(cuMemGetInfo_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuMemGetInfo_v2(free_bytes, total_bytes);
    int index = rc == CUDA_SUCCESS ? gl_current_index(NULL) : -1;
    if (index < 0)
        return rc;
    uint64_t cap = cap_of(index);
    uint64_t used = gpulet_region_used(gl_region(), (uint32_t)index);
    uint64_t left = used < cap ? cap - used : 0;
    if (total_bytes)
        *total_bytes = cap;
    if (free_bytes && *free_bytes > left)
        *free_bytes = left;
    return rc;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    if (!GL_REAL(cuDeviceTotalMem_v2))
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuDeviceTotalMem_v2(bytes, dev);
    int index = rc == CUDA_SUCCESS && bytes ? gl_cu_index(dev) : -1;
    if (index >= 0 && *bytes > cap_of(index))
        *bytes = cap_of(index);
    return rc;
}
