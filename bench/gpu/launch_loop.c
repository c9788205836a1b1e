/*
 * launch_loop: the host cost of one cuLaunchKernel, for the limiter's overhead benchmark.
 *
 * Loads an empty kernel from embedded PTX into device 0's primary context, launches it N
 * times back to back (1 block, 1 thread, stream 0), and prints
 *   launches=N seconds=S ns_per_launch=X
 * where S is the wall time of the N launch calls (a warm-up of 1,000 launches runs first;
 * the final synchronisation is not counted). The driver is reached through dlopen/dlsym,
 * as most programs reach it, so this builds without cuda.h and LD_PRELOAD hooks apply.
 *
 * Build: cc -O2 -o /tmp/launch_loop bench/gpu/launch_loop.c -ldl
 * Run:   /tmp/launch_loop [N]          (default 1000000)
 * Errors print the CUresult and exit 1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The few driver API types used here (cuda.h layouts). */
typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef int CUjit_option;
enum { CUDA_SUCCESS = 0 };
enum { CU_JIT_ERROR_LOG_BUFFER = 5, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6 };

typedef CUresult (*cuInit_fn)(unsigned int flags);
typedef CUresult (*cuDeviceGet_fn)(CUdevice *dev, int ordinal);
typedef CUresult (*cuDevicePrimaryCtxRetain_fn)(CUcontext *ctx, CUdevice dev);
typedef CUresult (*cuDevicePrimaryCtxRelease_fn)(CUdevice dev);
typedef CUresult (*cuCtxSetCurrent_fn)(CUcontext ctx);
typedef CUresult (*cuCtxSynchronize_fn)(void);
typedef CUresult (*cuCtxSynchronize_v2_fn)(CUcontext ctx);
typedef CUresult (*cuModuleLoadData_fn)(CUmodule *mod, const void *image);
typedef CUresult (*cuModuleLoadDataEx_fn)(CUmodule *mod, const void *image, unsigned int n,
                                          CUjit_option *options, void **values);
typedef CUresult (*cuModuleGetFunction_fn)(CUfunction *f, CUmodule mod, const char *name);
typedef CUresult (*cuModuleUnload_fn)(CUmodule mod);
typedef CUresult (*cuLaunchKernel_fn)(CUfunction f, unsigned int gx, unsigned int gy,
                                      unsigned int gz, unsigned int bx, unsigned int by,
                                      unsigned int bz, unsigned int shmem, CUstream stream,
                                      void **params, void **extra);
typedef CUresult (*cuGetErrorName_fn)(CUresult rc, const char **name);

/* An empty kernel. PTX ISA 8.0 (CUDA 12.0+) for sm_90; the driver JIT-compiles it. */
static const char noop_ptx[] = ".version 8.0\n"
                               ".target sm_90\n"
                               ".address_size 64\n"
                               "\n"
                               ".visible .entry noop()\n"
                               "{\n"
                               "\tret;\n"
                               "}\n";

#define WARMUP 1000ULL

static void *libcuda;
static cuGetErrorName_fn get_error_name;
static cuCtxSynchronize_fn ctx_synchronize;
static cuCtxSynchronize_v2_fn ctx_synchronize_v2; /* only if a driver lacks the original */
static CUcontext ctx;

static void *sym(const char *name, int required) {
    void *p = dlsym(libcuda, name);
    if (!p && required) {
        fprintf(stderr, "launch_loop: libcuda.so.1 has no %s\n", name);
        exit(1);
    }
    return p;
}

/* dlsym's object pointer into a function pointer, without a pedantic cast. */
#define LOAD(var, name, required)                                                               \
    do {                                                                                        \
        void *p_ = sym((name), (required));                                                     \
        memcpy(&(var), &p_, sizeof(var));                                                       \
    } while (0)

static void check(CUresult rc, const char *what) {
    if (rc == CUDA_SUCCESS)
        return;
    const char *name = NULL;
    if (get_error_name == NULL || get_error_name(rc, &name) != CUDA_SUCCESS || name == NULL)
        name = "?";
    fprintf(stderr, "launch_loop: %s failed: CUresult %d (%s)\n", what, rc, name);
    exit(1);
}

static CUresult synchronize(void) {
    return ctx_synchronize ? ctx_synchronize() : ctx_synchronize_v2(ctx);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    unsigned long long n = 1000000ULL;
    if (argc > 2) {
        fprintf(stderr, "usage: %s [LAUNCHES]\n", argv[0]);
        return 1;
    }
    if (argc == 2) {
        char *end = NULL;
        errno = 0;
        n = strtoull(argv[1], &end, 10);
        if (errno != 0 || end == argv[1] || *end != '\0' || n == 0 || argv[1][0] == '-') {
            fprintf(stderr, "launch_loop: LAUNCHES must be a positive integer, not '%s'\n",
                    argv[1]);
            return 1;
        }
    }

    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!libcuda) {
        fprintf(stderr, "launch_loop: cannot load libcuda.so.1: %s\n", dlerror());
        return 1;
    }
    cuInit_fn cu_init;
    cuDeviceGet_fn device_get;
    cuDevicePrimaryCtxRetain_fn ctx_retain;
    cuDevicePrimaryCtxRelease_fn ctx_release;
    cuCtxSetCurrent_fn ctx_set_current;
    cuModuleLoadData_fn module_load;
    cuModuleLoadDataEx_fn module_load_ex;
    cuModuleGetFunction_fn module_get_function;
    cuModuleUnload_fn module_unload;
    cuLaunchKernel_fn launch;
    LOAD(get_error_name, "cuGetErrorName", 0);
    LOAD(cu_init, "cuInit", 1);
    LOAD(device_get, "cuDeviceGet", 1);
    LOAD(ctx_retain, "cuDevicePrimaryCtxRetain", 1);
    LOAD(ctx_release, "cuDevicePrimaryCtxRelease_v2", 0);
    LOAD(ctx_set_current, "cuCtxSetCurrent", 1);
    LOAD(ctx_synchronize, "cuCtxSynchronize", 0);
    if (!ctx_synchronize)
        LOAD(ctx_synchronize_v2, "cuCtxSynchronize_v2", 1);
    LOAD(module_load, "cuModuleLoadData", 1);
    LOAD(module_load_ex, "cuModuleLoadDataEx", 0);
    LOAD(module_get_function, "cuModuleGetFunction", 1);
    LOAD(module_unload, "cuModuleUnload", 0);
    LOAD(launch, "cuLaunchKernel", 1);

    CUdevice dev;
    CUmodule mod;
    CUfunction fn;
    check(cu_init(0), "cuInit");
    check(device_get(&dev, 0), "cuDeviceGet(0)");
    check(ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(ctx_set_current(ctx), "cuCtxSetCurrent");
    CUresult rc = module_load(&mod, noop_ptx);
    if (rc != CUDA_SUCCESS && module_load_ex != NULL) {
        /* Once more, for the JIT's own account of what went wrong. */
        char log[4096] = "";
        CUjit_option opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
        void *vals[2] = {log, (void *)(uintptr_t)sizeof log};
        if (module_load_ex(&mod, noop_ptx, 2, opts, vals) != CUDA_SUCCESS && log[0])
            fprintf(stderr, "launch_loop: PTX JIT log: %s\n", log);
    }
    check(rc, "cuModuleLoadData(noop PTX)");
    check(module_get_function(&fn, mod, "noop"), "cuModuleGetFunction(noop)");

    for (unsigned long long i = 0; i < WARMUP; i++)
        check(launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), "cuLaunchKernel (warm-up)");
    check(synchronize(), "cuCtxSynchronize (warm-up)");

    double t0 = now_s();
    for (unsigned long long i = 0; i < n; i++) {
        rc = launch(fn, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        if (rc != CUDA_SUCCESS) {
            fprintf(stderr, "launch_loop: launch %llu of %llu:\n", i + 1, n);
            check(rc, "cuLaunchKernel");
        }
    }
    double seconds = now_s() - t0;
    check(synchronize(), "cuCtxSynchronize");

    printf("launches=%llu seconds=%.6f ns_per_launch=%.1f\n", n, seconds,
           seconds * 1e9 / (double)n);
    fflush(stdout);

    if (module_unload != NULL)
        module_unload(mod);
    if (ctx_release != NULL)
        ctx_release(dev);
    return 0;
}
