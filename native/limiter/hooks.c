/*
 * The one table of entry points, and the two doors into it: dlsym and cuGetProcAddress.
 *
 * A program reaches a driver function by linking it (our exported function of the same
 * name wins, being preloaded), by dlsym (this file's dlsym), or by cuGetProcAddress[_v2]
 * (asked for by base name + CUDA version + flags; the CUDA 13 runtime asks for
 * cuGetProcAddress itself that way and uses what it gets for everything after). Whatever
 * the path, the driver picks the function (its own name + version mapping) and we swap the
 * pointer it returns for ours when it is one we replace: identity of the real pointer, not
 * names, so a new version mapping in the driver cannot slip past.
 */
#include <dlfcn.h>
#include <stddef.h>

#include "limiter.h"

#define GL_DEFINE(lib, ret, name, params) ret(*real_##name) params;
GL_HOOKED(GL_DEFINE)
GL_USED(GL_DEFINE)
#undef GL_DEFINE

struct gl_entry {
    int lib;
    const char *name;
    void *hook; /* NULL: only called, never replaced */
    void **real;
};

#define GL_ROW_HOOKED(lib, ret, name, params) {GL_LIB_##lib, #name, (void *)name, (void **)&real_##name},
#define GL_ROW_USED(lib, ret, name, params) {GL_LIB_##lib, #name, NULL, (void **)&real_##name},
static const struct gl_entry table[] = {GL_HOOKED(GL_ROW_HOOKED) GL_USED(GL_ROW_USED)};
#undef GL_ROW_HOOKED
#undef GL_ROW_USED

#define TABLE_LEN (sizeof table / sizeof table[0])

typedef void *(*dlsym_fn)(void *, const char *);

GL_UNINSTRUMENTED void *gl_real_dlsym(void *handle, const char *name) {
    static dlsym_fn real;
    dlsym_fn fn = __atomic_load_n(&real, __ATOMIC_ACQUIRE);
    if (!fn) {
        /* dlvsym is not ours: it finds the next dlsym, libc's (2.34+) or libdl's. */
        fn = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (!fn)
            fn = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
        if (!fn)
            fn = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.17");
        __atomic_store_n(&real, fn, __ATOMIC_RELEASE);
    }
    return fn ? fn(handle, name) : NULL;
}

void gl_fill_table(int lib, void *handle) {
    for (size_t i = 0; i < TABLE_LEN; i++)
        if (table[i].lib == lib && !__atomic_load_n(table[i].real, __ATOMIC_ACQUIRE))
            __atomic_store_n(table[i].real, gl_real_dlsym(handle, table[i].name),
                             __ATOMIC_RELEASE);
}

void *gl_substitute(void *real) {
    gl_resolve();
    if (!real || !gl.active)
        return NULL;
    for (size_t i = 0; i < TABLE_LEN; i++)
        if (table[i].hook && __atomic_load_n(table[i].real, __ATOMIC_ACQUIRE) == real)
            return table[i].hook;
    return NULL;
}

GL_UNINSTRUMENTED static int driver_name(const char *name) {
    if (!name)
        return 0;
    if (name[0] == 'c' && name[1] == 'u')
        return 1;
    return name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l';
}

GL_EXPORT GL_UNINSTRUMENTED void *dlsym(void *handle, const char *name) {
    void *found = gl_real_dlsym(handle, name);
    if (driver_name(name)) {
        void *ours = gl_substitute(found);
        if (ours)
            return ours;
    }
    return found;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    gl_resolve();
    if (!real_cuGetProcAddress)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuGetProcAddress(symbol, pfn, cudaVersion, flags);
    if (rc == CUDA_SUCCESS && pfn) {
        void *ours = gl_substitute(*pfn);
        if (ours)
            *pfn = ours;
    }
    return rc;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus) {
    gl_resolve();
    if (!real_cuGetProcAddress_v2)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult rc = real_cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (rc == CUDA_SUCCESS && pfn) {
        void *ours = gl_substitute(*pfn);
        if (ours)
            *pfn = ours;
    }
    return rc;
}
