/*
 * The oldest glibc symbol versions, so the limiter loads in any container from glibc 2.17 on.
 *
 * The library is preloaded into every process of a sliced container, whatever glibc that
 * image has. Linked as is against a new glibc it would ask for dlopen@GLIBC_2.34 and
 * fstat@GLIBC_2.33, and every process of a container with an older glibc (Ubuntu 20.04,
 * UBI 8, Debian 11) would fail to start. So each symbol whose default version is newer
 * than 2.17 is bound to its first version here (x86_64: 2.2.5, or when the call appeared;
 * aarch64: 2.17), and the library links libdl.so.2 and libpthread.so.0, where those versions
 * live before glibc 2.34. Every file that calls one of them includes this header. (fstat is
 * not used: before 2.33 it was an inline wrapper, with no symbol to bind to.)
 */
#ifndef GPULET_GLIBC_COMPAT_H
#define GPULET_GLIBC_COMPAT_H

#include <limits.h> /* any libc header: it defines __GLIBC__ on glibc */

#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#if defined(__x86_64__)
#define GL_V_BASE GLIBC_2.2.5 /* x86_64's first glibc */
#define GL_V_ROBUST GLIBC_2.12
#else
#define GL_V_BASE GLIBC_2.17 /* aarch64's first glibc: everything is there */
#define GL_V_ROBUST GLIBC_2.17
#endif
#define GL_STR(x) #x
#define GL_SYMVER(sym, ver) __asm__(".symver " #sym "," #sym "@" GL_STR(ver))
GL_SYMVER(dlopen, GL_V_BASE);
GL_SYMVER(dlvsym, GL_V_BASE);
GL_SYMVER(pthread_mutexattr_init, GL_V_BASE);
GL_SYMVER(pthread_mutexattr_destroy, GL_V_BASE);
GL_SYMVER(pthread_mutexattr_setpshared, GL_V_BASE);
GL_SYMVER(pthread_mutexattr_setrobust, GL_V_ROBUST);
GL_SYMVER(pthread_mutex_consistent, GL_V_ROBUST);
#undef GL_SYMVER
#undef GL_STR
#undef GL_V_BASE
#undef GL_V_ROBUST
#endif

#endif
