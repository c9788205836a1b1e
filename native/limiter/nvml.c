/*
 * NVML's view of memory, for nvidia-smi and libraries that ask NVML: the cap as total,
 * the container's charge as used.
 */
#include <string.h>

#include "limiter.h"

static int nvml_index(nvmlDevice_t device) {
    if (!gl.active || !GL_REAL(nvmlDeviceGetUUID))
        return -1;
    char uuid[96];
    if (real_nvmlDeviceGetUUID(device, uuid, sizeof uuid) != NVML_SUCCESS)
        return -1;
    for (uint32_t i = 0; i < gl.limits.count; i++)
        if (strcmp(uuid, gl.limits.dev[i].uuid) == 0)
            return (int)i;
    return -1;
}

/* total, used and free of a limited device, or 0 when `device` is not limited. */
static int slice_view(nvmlDevice_t device, unsigned long long *total, unsigned long long *used,
                      unsigned long long *free_bytes) {
    int index = nvml_index(device);
    if (index < 0)
        return 0;
    uint64_t cap = gl.limits.dev[index].memory_bytes;
    uint64_t charged = gpulet_region_used(gl_region(), (uint32_t)index);
    *total = cap;
    *used = charged < cap ? charged : cap;
    *free_bytes = cap - *used;
    return 1;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (!GL_REAL(nvmlDeviceGetMemoryInfo))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = real_nvmlDeviceGetMemoryInfo(device, memory);
    if (rc == NVML_SUCCESS && memory)
        slice_view(device, &memory->total, &memory->used, &memory->free);
    return rc;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (!GL_REAL(nvmlDeviceGetMemoryInfo_v2))
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = real_nvmlDeviceGetMemoryInfo_v2(device, memory);
    if (rc == NVML_SUCCESS && memory &&
        slice_view(device, &memory->total, &memory->used, &memory->free))
        memory->reserved = 0;
    return rc;
}
