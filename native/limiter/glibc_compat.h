/*
 * The oldest glibc symbol versions, so the limiter loads in any container from glibc 2.17 on.
 *
 * The library is preloaded into every process of a sliced container, whatever glibc that
 * image has. Linked as is against a new glibc it would ask for dlopen@GLIBC_2.34 and
 * fstat@GLIBC_2.33, and every process of a container with an older glibc (Ubuntu 20.04,
 * UBI 8, Debian 11) would fail to start. So each symbol whose default version is newer
 * than 2.17 is bound to its first version here (x86_64: 2.2.5, or when the call appeared),
 * and the library links libdl.so.2 and libpthread.so.0, where those versions live before
 * glibc 2.34. Every file that calls one of them includes this header. (fstat is not used:
 * before 2.33 it was an inline wrapper, with no symbol to bind to.)
 */
#ifndef GPULET_GLIBC_COMPAT_H
#define GPULET_GLIBC_COMPAT_H

#if defined(__GLIBC__) && defined(__x86_64__)
#define GL_SYMVER(sym, ver) __asm__(".symver " #sym "," #sym "@" #ver)
GL_SYMVER(dlopen, GLIBC_2.2.5);
GL_SYMVER(dlvsym, GLIBC_2.2.5);
GL_SYMVER(pthread_mutexattr_init, GLIBC_2.2.5);
GL_SYMVER(pthread_mutexattr_destroy, GLIBC_2.2.5);
GL_SYMVER(pthread_mutexattr_setpshared, GLIBC_2.2.5);
GL_SYMVER(pthread_mutexattr_setrobust, GLIBC_2.12);
GL_SYMVER(pthread_mutex_consistent, GLIBC_2.12);
#undef GL_SYMVER
#endif

#endif
