/*
 * State, configuration and the container's region.
 *
 * The constructor only reads the limits file (every process of the container loads this
 * library, most never touch a GPU). The region is attached on first use, the real entry
 * points resolved on first lookup; neither ever loads a library that is not loaded already
 * (RTLD_NOLOAD), so no constructor of someone else's runs under us.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "limiter.h"

struct gl_state gl;

static struct gpulet_handle region = {.fd = -1, .slot = -1, .region = NULL};
static pthread_mutex_t region_mutex = PTHREAD_MUTEX_INITIALIZER;
static int region_ready;   /* atomic: 1 once `region` is attached */
static int resolved[2];    /* atomic, per gl_lib: 1 once its table is filled */
static int cu_index[64];   /* CUdevice -> limits index + 2; 0: not looked up yet */

void gl_log(const char *fmt, ...) {
    char line[512];
    int n = snprintf(line, sizeof line, "gpulet-limiter: pid=%d ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strnlen(line, sizeof line - 2);
    line[len] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len + 1);
    (void)w;
}

static void say_inactive_once(const char *why) {
    static int said;
    if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
        gl_log("event=inactive reason=\"%s\"", why);
}

static void child_after_fork(void) {
    /* The parent's slot and allocations are the parent's: start clean, attach lazily. */
    if (region.fd >= 0)
        close(region.fd);
    region = (struct gpulet_handle){.fd = -1, .slot = -1, .region = NULL};
    __atomic_store_n(&region_ready, 0, __ATOMIC_RELEASE);
    pthread_mutex_init(&region_mutex, NULL);
    gl_memory_forget_all();
    gl_compute_forget_all();
}

__attribute__((constructor)) static void gl_start(void) {
    const char *dir = getenv("GPULET_REGION_DIR");
    if (!dir || !*dir)
        dir = "/run/gpulet";
    snprintf(gl.dir, sizeof gl.dir, "%s", dir);
    char path[600], err[GPULET_ERR_LEN];
    snprintf(path, sizeof path, "%s/limits", gl.dir);
    int rc = gpulet_limits_read(path, &gl.limits, err, sizeof err);
    if (rc == 0) {
        gl.active = 1;
        for (uint32_t i = 0; i < gl.limits.count; i++)
            if (gl.limits.dev[i].core_percent < 100 ||
                (gl.limits.dev[i].flags & GPULET_LIMIT_BATCH))
                gl.pacing = 1;
    } else if (rc != -ENOENT) {
        gl_log("event=bad-limits error=\"%s\"", err);
    }
    pthread_atfork(NULL, NULL, child_after_fork);
}

__attribute__((destructor)) static void gl_stop(void) {
    if (__atomic_load_n(&region_ready, __ATOMIC_ACQUIRE))
        gpulet_region_close(&region); /* gives back what this process still holds */
}

void gl_resolve(void) {
    static const char *const sonames[2] = {"libcuda.so.1", "libnvidia-ml.so.1"};
    for (int lib = 0; lib < 2; lib++) {
        if (__atomic_load_n(&resolved[lib], __ATOMIC_ACQUIRE))
            continue;
        void *h = dlopen(sonames[lib], RTLD_NOW | RTLD_NOLOAD);
        if (!h)
            continue; /* not loaded (yet): nothing of it can be called */
        gl_fill_table(lib, h);
        __atomic_store_n(&resolved[lib], 1, __ATOMIC_RELEASE);
        if (lib == GL_LIB_CUDA && !gl.active)
            say_inactive_once("no limits file in GPULET_REGION_DIR");
    }
}

struct gpulet_handle *gl_region(void) {
    if (__atomic_load_n(&region_ready, __ATOMIC_ACQUIRE))
        return &region;
    pthread_mutex_lock(&region_mutex);
    if (!region_ready) {
        char path[600], err[GPULET_ERR_LEN], comm[GPULET_COMM_LEN] = "";
        snprintf(path, sizeof path, "%s/region", gl.dir);
        FILE *f = fopen("/proc/self/comm", "re");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
        }
        int rc = gpulet_region_open(path, &region, err, sizeof err);
        if (rc == 0 && (rc = gpulet_region_matches(&region, &gl.limits, err, sizeof err)) != 0)
            gpulet_region_close(&region);
        if (rc == 0 &&
            (rc = gpulet_region_attach(&region, (int32_t)getpid(), comm, err, sizeof err)) != 0)
            gpulet_region_close(&region);
        if (rc != 0) {
            /* Limits still hold, per process: better than none. */
            gl_log("event=private-region error=\"%s\"", err);
            char err2[GPULET_ERR_LEN];
            if (gpulet_region_private(&gl.limits, &region, err2, sizeof err2) != 0 ||
                gpulet_region_attach(&region, (int32_t)getpid(), comm, err2, sizeof err2) != 0) {
                gl_log("event=fatal error=\"%s\"", err2);
                abort();
            }
        }
        __atomic_store_n(&region_ready, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&region_mutex);
    return &region;
}

static void format_uuid(const CUuuid *u, char *out, size_t n) {
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, n,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

int gl_cu_index(CUdevice dev) {
    if (!gl.active || dev < 0)
        return -1;
    int cached = dev < 64 ? __atomic_load_n(&cu_index[dev], __ATOMIC_ACQUIRE) : 0;
    if (cached)
        return cached - 2;
    CUuuid u;
    CUresult rc = CUDA_ERROR_NOT_FOUND;
    if (real_cuDeviceGetUuid_v2)
        rc = real_cuDeviceGetUuid_v2(&u, dev);
    else if (real_cuDeviceGetUuid)
        rc = real_cuDeviceGetUuid(&u, dev);
    int index = -1;
    if (rc == CUDA_SUCCESS) {
        char text[GPULET_UUID_LEN];
        format_uuid(&u, text, sizeof text);
        for (uint32_t i = 0; i < gl.limits.count; i++)
            if (strcmp(text, gl.limits.dev[i].uuid) == 0)
                index = (int)i;
        if (index < 0)
            gl_log("event=unlimited-device device=%d uuid=%s", dev, text);
    }
    if (dev < 64 && rc == CUDA_SUCCESS)
        __atomic_store_n(&cu_index[dev], index + 2, __ATOMIC_RELEASE);
    return index;
}

int gl_current_index(CUdevice *dev_out) {
    CUdevice dev = -1;
    if (!gl.active || !real_cuCtxGetDevice || real_cuCtxGetDevice(&dev) != CUDA_SUCCESS)
        return -1;
    if (dev_out)
        *dev_out = dev;
    return gl_cu_index(dev);
}
