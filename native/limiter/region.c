/*
 * The shared accounting region and the limits file (region.h; formats in docs/limiter.md).
 *
 * Plain memory and file work: nothing here calls the CUDA driver or blocks on anything but
 * the region lock. Slot liveness is an OFD write lock on the slot's first byte in the region
 * file; the kernel drops it when the process that took it dies.
 */
#include "region.h"

#include "glibc_compat.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* As glibc_compat.h does for the others: pthread_mutex_timedlock's first version, not the
 * GLIBC_2.34 one, so the limiter still loads on glibc 2.17. */
#if defined(__GLIBC__) && defined(__x86_64__)
__asm__(".symver pthread_mutex_timedlock,pthread_mutex_timedlock@GLIBC_2.2.5");
#elif defined(__GLIBC__) && defined(__aarch64__)
__asm__(".symver pthread_mutex_timedlock,pthread_mutex_timedlock@GLIBC_2.17");
#endif

#define MIB (1ull << 20)
#define MAX_MIB (1ull << 40)
#define LIMITS_MAX_BYTES (64 * 1024)
#define MAX_TOKENS 5 /* a device line has 4; one more tells "too many" */
#define QUOTE 40     /* at most this much of a bad token is quoted back */

_Static_assert(sizeof(pthread_mutex_t) <= 64, "the mutex must fit the lock's 64 bytes");
_Static_assert(sizeof(struct gpulet_region) < UINT32_MAX, "the size must fit its field");

__attribute__((format(printf, 4, 5))) static int fail(char *err, size_t errlen, int rc,
                                                      const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* fstat without glibc's fstat symbol (glibc_compat.h: it became one only in 2.33): the
 * system call, whose struct is glibc's struct stat on x86_64 and aarch64. */
static int stat_fd(int fd, struct stat *st)
{
#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
    return syscall(SYS_fstat, fd, st) == 0 ? 0 : -errno;
#else
    return fstat(fd, st) == 0 ? 0 : -errno;
#endif
}

uint64_t gpulet_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- limits -------------------------------------------------------------------------- */

struct token {
    const char *s;
    int n; /* short: a line of the file is at most 64 KiB */
};

static bool token_is(struct token t, const char *word)
{
    return (size_t)t.n == strlen(word) && memcmp(t.s, word, (size_t)t.n) == 0;
}

static bool uuid_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-';
}

/* Why `s` (n bytes) is not a valid uuid, or NULL. */
static const char *uuid_problem(const char *s, size_t n)
{
    if (n == 0)
        return "is empty";
    if (n >= GPULET_UUID_LEN)
        return "is longer than 63 characters";
    for (size_t i = 0; i < n; i++)
        if (!uuid_char(s[i]))
            return "has a character outside [A-Za-z0-9-]";
    return NULL;
}

/* A decimal number; values above `max` come back as max + 1. False when not all digits. */
static bool decimal(struct token t, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;
    if (t.n == 0)
        return false;
    for (int i = 0; i < t.n; i++) {
        if (t.s[i] < '0' || t.s[i] > '9')
            return false;
        if (x <= max)
            x = x * 10 + (uint64_t)(t.s[i] - '0'); /* max is small: no overflow */
    }
    *v = x > max ? max + 1 : x;
    return true;
}

/* Split [p, end) on blanks; returns the number of fields (only MAX_TOKENS are stored). */
static int split(const char *p, const char *end, struct token *tok)
{
    int count = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            break;
        const char *start = p;
        while (p < end && *p != ' ' && *p != '\t')
            p++;
        if (count < MAX_TOKENS)
            tok[count] = (struct token){start, (int)(p - start)};
        count++;
    }
    return count;
}

static int parse_header(const struct token *t, int n, unsigned line, char *err, size_t errlen)
{
    uint64_t version;
    if (n == 2 && token_is(t[0], "gpulet-limits") && decimal(t[1], UINT32_MAX, &version)) {
        if (version == 1)
            return 0;
        return fail(err, errlen, -EINVAL, "limits line %u: unsupported limits version %.*s",
                    line, t[1].n > QUOTE ? QUOTE : t[1].n, t[1].s);
    }
    return fail(err, errlen, -EINVAL, "limits line %u: expected 'gpulet-limits 1' first", line);
}

static int parse_device(const struct token *t, int n, unsigned line, struct gpulet_limits *l,
                        char *err, size_t errlen)
{
    uint64_t mib, core;
    const char *why;
    if (!token_is(t[0], "device"))
        return fail(err, errlen, -EINVAL, "limits line %u: unknown keyword '%.*s'", line,
                    t[0].n > QUOTE ? QUOTE : t[0].n, t[0].s);
    if (n != 4 && !(n == 5 && token_is(t[4], "batch")))
        return fail(err, errlen, -EINVAL,
                    "limits line %u: expected 'device <uuid> <memory_mib> <core_percent> [batch]'",
                    line);
    why = uuid_problem(t[1].s, (size_t)t[1].n);
    if (why != NULL)
        return fail(err, errlen, -EINVAL, "limits line %u: uuid '%.*s' %s", line,
                    t[1].n > QUOTE ? QUOTE : t[1].n, t[1].s, why);
    if (!decimal(t[2], MAX_MIB, &mib))
        return fail(err, errlen, -EINVAL, "limits line %u: memory '%.*s' is not a number of MiB",
                    line, t[2].n > QUOTE ? QUOTE : t[2].n, t[2].s);
    if (mib < 1 || mib > MAX_MIB)
        return fail(err, errlen, -EINVAL, "limits line %u: memory %.*s MiB is not in 1..%llu",
                    line, t[2].n > QUOTE ? QUOTE : t[2].n, t[2].s, MAX_MIB);
    if (!decimal(t[3], 100, &core))
        return fail(err, errlen, -EINVAL, "limits line %u: core percent '%.*s' is not a number",
                    line, t[3].n > QUOTE ? QUOTE : t[3].n, t[3].s);
    if (core < 1 || core > 100)
        return fail(err, errlen, -EINVAL, "limits line %u: core percent %.*s is not in 1..100",
                    line, t[3].n > QUOTE ? QUOTE : t[3].n, t[3].s);
    for (uint32_t i = 0; i < l->count; i++)
        if (token_is(t[1], l->dev[i].uuid))
            return fail(err, errlen, -EINVAL, "limits line %u: duplicate uuid %.*s", line,
                        t[1].n, t[1].s);
    if (l->count == GPULET_MAX_DEVICES)
        return fail(err, errlen, -EINVAL, "limits line %u: more than %d devices", line,
                    GPULET_MAX_DEVICES);
    struct gpulet_limit *d = &l->dev[l->count++];
    memcpy(d->uuid, t[1].s, (size_t)t[1].n);
    d->uuid[t[1].n] = '\0';
    d->memory_bytes = mib * MIB;
    d->core_percent = (uint32_t)core;
    d->flags = n == 5 ? GPULET_LIMIT_BATCH : 0;
    return 0;
}

/* One line [p, eol): a comment, a blank line, the header or a device. */
static int parse_line(const char *p, const char *eol, unsigned line, struct gpulet_limits *l,
                      bool *header, char *err, size_t errlen)
{
    const char *q = p;
    while (q < eol && (*q == ' ' || *q == '\t'))
        q++;
    bool comment = q < eol && *q == '#';
    for (const char *c = p; c < eol; c++) {
        unsigned char b = (unsigned char)*c;
        if (b == 0 || (!comment && b != '\t' && (b < 0x20 || b > 0x7e)))
            return fail(err, errlen, -EINVAL, "limits line %u: unexpected byte 0x%02x", line, b);
    }
    if (comment || q == eol)
        return 0;
    struct token t[MAX_TOKENS];
    int n = split(q, eol, t);
    if (!*header) {
        *header = true;
        return parse_header(t, n, line, err, errlen);
    }
    if (token_is(t[0], "gpulet-limits"))
        return fail(err, errlen, -EINVAL, "limits line %u: a second 'gpulet-limits' line", line);
    return parse_device(t, n, line, l, err, errlen);
}

int gpulet_limits_parse(const char *text, size_t len, struct gpulet_limits *out, char *err,
                        size_t errlen)
{
    struct gpulet_limits l;
    bool header = false;
    unsigned line = 0;
    if (out == NULL || (text == NULL && len > 0))
        return fail(err, errlen, -EINVAL, "limits: nothing to parse");
    memset(&l, 0, sizeof l);
    for (const char *p = text, *end = text == NULL ? NULL : text + len; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol != NULL ? eol + 1 : end;
        int rc = parse_line(p, eol != NULL ? eol : end, ++line, &l, &header, err, errlen);
        if (rc != 0)
            return rc;
        p = next;
    }
    if (!header)
        return fail(err, errlen, -EINVAL, "limits: no 'gpulet-limits 1' line");
    if (l.count == 0)
        return fail(err, errlen, -EINVAL, "limits: no device line");
    *out = l;
    return 0;
}

int gpulet_limits_read(const char *path, struct gpulet_limits *out, char *err, size_t errlen)
{
    char msg[GPULET_ERR_LEN];
    size_t len = 0;
    int rc = 0;
    struct stat st;
    /* O_NONBLOCK: a FIFO put in its place opens at once (and is refused below). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot open limits %s: %s", path, strerror(errno));
    rc = stat_fd(fd, &st);
    if (rc == 0 && !S_ISREG(st.st_mode))
        rc = fail(err, errlen, -EINVAL, "limits %s is not a regular file", path);
    else if (rc != 0)
        rc = fail(err, errlen, rc, "cannot read limits %s: %s", path, strerror(-rc));
    if (rc != 0) {
        close(fd);
        return rc;
    }
    char *buf = malloc(LIMITS_MAX_BYTES + 1);
    if (buf == NULL) {
        close(fd);
        return fail(err, errlen, -ENOMEM, "cannot read limits %s: out of memory", path);
    }
    while (rc == 0) {
        ssize_t r = read(fd, buf + len, LIMITS_MAX_BYTES + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            rc = fail(err, errlen, -errno, "cannot read limits %s: %s", path, strerror(errno));
        else if (r == 0)
            break;
        else if ((len += (size_t)r) > LIMITS_MAX_BYTES)
            rc = fail(err, errlen, -EFBIG, "limits %s is larger than 64 KiB", path);
    }
    close(fd);
    if (rc == 0) {
        rc = gpulet_limits_parse(buf, len, out, msg, sizeof msg);
        if (rc != 0)
            fail(err, errlen, rc, "%s: %s", path, msg);
    }
    free(buf);
    return rc;
}

__attribute__((format(printf, 4, 5))) static void append(char *buf, size_t buflen, size_t *off,
                                                         const char *fmt, ...)
{
    va_list ap;
    size_t room = *off < buflen ? buflen - *off : 0;
    va_start(ap, fmt);
    int n = vsnprintf(room > 0 ? buf + *off : NULL, room, fmt, ap);
    va_end(ap);
    *off += n > 0 ? (size_t)n : 0;
}

int gpulet_limits_format(const struct gpulet_limits *l, char *buf, size_t buflen)
{
    size_t off = 0;
    if (l == NULL || l->count > GPULET_MAX_DEVICES || (buf == NULL && buflen > 0))
        return -EINVAL;
    append(buf, buflen, &off, "gpulet-limits 1\n");
    for (uint32_t i = 0; i < l->count; i++) {
        const struct gpulet_limit *d = &l->dev[i];
        if (strnlen(d->uuid, GPULET_UUID_LEN) == GPULET_UUID_LEN || d->memory_bytes % MIB != 0)
            return -EINVAL;
        append(buf, buflen, &off, "device %s %llu %u%s\n", d->uuid,
               (unsigned long long)(d->memory_bytes / MIB), d->core_percent,
               d->flags & GPULET_LIMIT_BATCH ? " batch" : "");
    }
    if (off >= buflen || off > INT_MAX)
        return -ENOSPC;
    return (int)off;
}

/* The checks of the parser, for limits that were built rather than parsed. */
static int check_limits(const struct gpulet_limits *l, char *err, size_t errlen)
{
    if (l == NULL || l->count < 1 || l->count > GPULET_MAX_DEVICES)
        return fail(err, errlen, -EINVAL, "limits: %u devices, expected 1..%d",
                    l == NULL ? 0 : l->count, GPULET_MAX_DEVICES);
    for (uint32_t i = 0; i < l->count; i++) {
        const struct gpulet_limit *d = &l->dev[i];
        size_t n = strnlen(d->uuid, GPULET_UUID_LEN);
        const char *why = uuid_problem(d->uuid, n);
        if (why != NULL)
            return fail(err, errlen, -EINVAL, "limits device %u: uuid '%.*s' %s", i, QUOTE,
                        d->uuid, why);
        if (d->memory_bytes % MIB != 0 || d->memory_bytes < MIB ||
            d->memory_bytes / MIB > MAX_MIB)
            return fail(err, errlen, -EINVAL,
                        "limits device %u: memory %llu bytes is not 1..%llu whole MiB", i,
                        (unsigned long long)d->memory_bytes, MAX_MIB);
        if (d->core_percent < 1 || d->core_percent > 100)
            return fail(err, errlen, -EINVAL, "limits device %u: core percent %u is not in 1..100",
                        i, d->core_percent);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(l->dev[j].uuid, d->uuid) == 0)
                return fail(err, errlen, -EINVAL, "limits device %u: duplicate uuid %s", i,
                            d->uuid);
    }
    return 0;
}

/* ---- the region ---------------------------------------------------------------------- */

static void handle_reset(struct gpulet_handle *h)
{
    h->fd = -1;
    h->slot = -1;
    h->region = NULL;
}

static off_t slot_offset(int slot)
{
    size_t off = offsetof(struct gpulet_region, slot) + (size_t)slot * sizeof(struct gpulet_slot);
    return (off_t)off;
}

/* F_OFD_SETLK on the slot's byte: F_WRLCK to take it, F_UNLCK to drop it. */
static int slot_lock(int fd, int slot, short type)
{
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = slot_offset(slot), .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : -errno;
}

/* Whether an open file description other than ours holds the slot's byte. Errors say yes:
 * a slot is only ever freed on proof that its owner is gone. */
static bool slot_held(int fd, int slot)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = slot_offset(slot), .l_len = 1};
    return fcntl(fd, F_OFD_GETLK, &fl) != 0 || fl.l_type != F_UNLCK;
}

static void bump_generation(struct gpulet_region *r)
{
    __atomic_add_fetch(&r->generation, 1, __ATOMIC_RELEASE);
}

/* Free the slots whose owner is gone; the caller holds the region lock. */
static int reap_locked(struct gpulet_handle *h)
{
    struct gpulet_region *r = h->region;
    int reaped = 0;
    if (h->fd < 0)
        return 0; /* a private region: every slot is this process's */
    for (int i = 0; i < GPULET_MAX_SLOTS; i++) {
        if (i == h->slot || r->slot[i].pid == 0 || slot_held(h->fd, i))
            continue;
        memset(&r->slot[i], 0, sizeof r->slot[i]);
        reaped++;
    }
    if (reaped > 0)
        bump_generation(r);
    return reaped;
}

/* What a lock call answered: 0 when the caller holds the lock. */
static int locked(struct gpulet_handle *h, int rc)
{
    if (rc == EOWNERDEAD) {
        /* Its holder died; every update under the lock is a single store, so the region is
         * whole. Its slot is freed with the other dead ones, here or, since the kernel wakes
         * us before it closes the dead process's files, at the next reap. */
        pthread_mutex_consistent(&h->region->lock.mutex);
        reap_locked(h);
        return 0;
    }
    return -rc;
}

int gpulet_region_lock(struct gpulet_handle *h)
{
    if (h == NULL || h->region == NULL)
        return -EINVAL;
    return locked(h, pthread_mutex_lock(&h->region->lock.mutex));
}

int gpulet_region_lock_within(struct gpulet_handle *h, uint64_t timeout_ns)
{
    struct timespec deadline;
    if (h == NULL || h->region == NULL)
        return -EINVAL;
    /* pthread_mutex_clocklock (CLOCK_MONOTONIC) is glibc 2.30's; the limiter loads on 2.17. */
    clock_gettime(CLOCK_REALTIME, &deadline);
    uint64_t ns = (uint64_t)deadline.tv_nsec + timeout_ns % 1000000000ull;
    deadline.tv_sec += (time_t)(timeout_ns / 1000000000ull + ns / 1000000000ull);
    deadline.tv_nsec = (long)(ns % 1000000000ull);
    return locked(h, pthread_mutex_timedlock(&h->region->lock.mutex, &deadline));
}

void gpulet_region_unlock(struct gpulet_handle *h)
{
    if (h != NULL && h->region != NULL)
        pthread_mutex_unlock(&h->region->lock.mutex);
}

static int mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc != 0)
        return -rc;
    rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0)
        rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0)
        rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

/* Fill a zeroed region for checked limits, lock included. */
static int region_init(struct gpulet_region *r, const struct gpulet_limits *l)
{
    r->magic = GPULET_REGION_MAGIC;
    r->version = GPULET_REGION_VERSION;
    r->size = (uint32_t)sizeof *r;
    r->devices = l->count;
    r->slots = GPULET_MAX_SLOTS;
    for (uint32_t i = 0; i < l->count; i++) {
        memcpy(r->dev[i].uuid, l->dev[i].uuid, GPULET_UUID_LEN);
        r->dev[i].memory_bytes = l->dev[i].memory_bytes;
        r->dev[i].core_percent = l->dev[i].core_percent;
    }
    return mutex_init(&r->lock.mutex);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int gpulet_region_create(const char *path, const struct gpulet_limits *l, char *err,
                         size_t errlen)
{
    char tmp[PATH_MAX];
    size_t size = sizeof(struct gpulet_region);
    int rc = check_limits(l, err, errlen);
    if (rc != 0)
        return rc;
    if (path == NULL ||
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return fail(err, errlen, -ENAMETOOLONG, "region path is too long");
    unlink(tmp); /* a leftover of a crashed writer with our pid */
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot create region %s: %s", tmp, strerror(errno));
    /* Zeros written, not a sparse ftruncate: a full disk is an error here, never a SIGBUS. */
    char *zeros = calloc(1, size);
    rc = zeros == NULL ? -ENOMEM : write_all(fd, zeros, size);
    free(zeros);
    if (rc == 0 && fchmod(fd, 0666) != 0)
        rc = -errno;
    if (rc == 0) {
        void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            rc = -errno;
        } else {
            rc = region_init(map, l); /* the mutex is initialised where it will live */
            munmap(map, size);
        }
    }
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0) {
        unlink(tmp);
        return fail(err, errlen, rc, "cannot create region %s: %s", path, strerror(-rc));
    }
    return 0;
}

int gpulet_region_open(const char *path, struct gpulet_handle *h, char *err, size_t errlen)
{
    struct {
        uint64_t magic;
        uint32_t version;
        uint32_t size;
    } head;
    const size_t want = sizeof(struct gpulet_region);
    if (h == NULL || path == NULL)
        return fail(err, errlen, -EINVAL, "no region path or handle");
    handle_reset(h);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot open region %s: %s", path, strerror(errno));
    int rc = 0;
    /* Magic and version come first: another version may have another length. */
    ssize_t n = pread(fd, &head, sizeof head, 0);
    off_t size = n < 0 ? -1 : lseek(fd, 0, SEEK_END); /* not fstat: see glibc_compat.h */
    if (n < 0 || size < 0)
        rc = fail(err, errlen, -errno, "cannot read region %s: %s", path, strerror(errno));
    else if ((size_t)n >= sizeof head.magic && head.magic != GPULET_REGION_MAGIC)
        rc = fail(err, errlen, -EINVAL, "%s is not a gpulet region", path);
    else if (n >= 12 && head.version != GPULET_REGION_VERSION)
        rc = fail(err, errlen, -EINVAL, "%s has region version %u; this build reads version %u",
                  path, head.version, GPULET_REGION_VERSION);
    else if ((size_t)size < want)
        rc = fail(err, errlen, -EINVAL, "region %s is truncated: %lld bytes, expected %zu", path,
                  (long long)size, want);
    else if ((size_t)size > want)
        rc = fail(err, errlen, -EINVAL, "region %s is %lld bytes, expected %zu", path,
                  (long long)size, want);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    struct gpulet_region *r = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r == MAP_FAILED) {
        rc = fail(err, errlen, -errno, "cannot map region %s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (r->size != want)
        rc = fail(err, errlen, -EINVAL, "region %s records size %u, expected %zu", path, r->size,
                  want);
    else if (r->devices > GPULET_MAX_DEVICES)
        rc = fail(err, errlen, -EINVAL, "region %s has %u devices, at most %d", path, r->devices,
                  GPULET_MAX_DEVICES);
    else if (r->slots != GPULET_MAX_SLOTS)
        rc = fail(err, errlen, -EINVAL, "region %s has %u slots, expected %d", path, r->slots,
                  GPULET_MAX_SLOTS);
    if (rc != 0) {
        munmap(r, want);
        close(fd);
        return rc;
    }
    h->fd = fd;
    h->region = r;
    return 0;
}

int gpulet_region_private(const struct gpulet_limits *l, struct gpulet_handle *h, char *err,
                          size_t errlen)
{
    if (h == NULL)
        return fail(err, errlen, -EINVAL, "no region handle");
    handle_reset(h);
    int rc = check_limits(l, err, errlen);
    if (rc != 0)
        return rc;
    struct gpulet_region *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE,
                                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return fail(err, errlen, -errno, "cannot map a private region: %s", strerror(errno));
    rc = region_init(r, l);
    if (rc != 0) {
        munmap(r, sizeof *r);
        return fail(err, errlen, rc, "cannot initialise the region lock: %s", strerror(-rc));
    }
    h->region = r;
    return 0;
}

void gpulet_region_close(struct gpulet_handle *h)
{
    if (h == NULL)
        return;
    if (h->region != NULL) {
        if (h->slot >= 0)
            gpulet_region_detach(h);
        munmap(h->region, sizeof *h->region);
        if (h->fd >= 0)
            close(h->fd);
    }
    handle_reset(h);
}

int gpulet_region_matches(const struct gpulet_handle *h, const struct gpulet_limits *l, char *err,
                          size_t errlen)
{
    if (h == NULL || h->region == NULL || l == NULL)
        return fail(err, errlen, -EINVAL, "no region or limits");
    const struct gpulet_region *r = h->region;
    if (r->devices != l->count)
        return fail(err, errlen, -ESTALE, "the region serves %u devices, the limits name %u",
                    r->devices, l->count);
    for (uint32_t i = 0; i < l->count; i++) {
        const struct gpulet_device_shared *d = &r->dev[i];
        if (strncmp(d->uuid, l->dev[i].uuid, GPULET_UUID_LEN) != 0)
            return fail(err, errlen, -ESTALE, "region device %u is %.*s, the limits name %.*s", i,
                        GPULET_UUID_LEN, d->uuid, GPULET_UUID_LEN, l->dev[i].uuid);
        if (d->memory_bytes != l->dev[i].memory_bytes || d->core_percent != l->dev[i].core_percent)
            return fail(err, errlen, -ESTALE,
                        "region device %u (%.*s) has other limits than the limits file", i,
                        GPULET_UUID_LEN, d->uuid);
    }
    return 0;
}

/* Take a free slot for `pid`; the caller holds the region lock. */
static int take_slot(struct gpulet_handle *h, int32_t pid, const char *comm)
{
    struct gpulet_region *r = h->region;
    for (int i = 0; i < GPULET_MAX_SLOTS; i++) {
        if (r->slot[i].pid != 0)
            continue;
        if (h->fd >= 0) {
            int rc = slot_lock(h->fd, i, F_WRLCK);
            if (rc == -EAGAIN || rc == -EACCES)
                continue; /* free but still locked: an inherited description; leave it */
            if (rc != 0)
                return rc;
        }
        struct gpulet_slot *s = &r->slot[i];
        memset(s, 0, sizeof *s);
        s->pid = pid;
        s->attached_ns = gpulet_now_ns();
        if (comm != NULL)
            strncpy(s->comm, comm, GPULET_COMM_LEN - 1);
        h->slot = i;
        bump_generation(r);
        return i;
    }
    return -ENOSPC;
}

int gpulet_region_attach(struct gpulet_handle *h, int32_t pid, const char *comm, char *err,
                         size_t errlen)
{
    if (h == NULL || h->region == NULL)
        return fail(err, errlen, -EINVAL, "the region is not open");
    if (h->slot >= 0)
        return fail(err, errlen, -EINVAL, "already attached to slot %d", h->slot);
    if (pid <= 0)
        return fail(err, errlen, -EINVAL, "pid %d is not a process id", (int)pid);
    int rc = gpulet_region_lock(h);
    if (rc != 0)
        return fail(err, errlen, rc, "cannot take the region lock: %s", strerror(-rc));
    rc = take_slot(h, pid, comm);
    if (rc == -ENOSPC && reap_locked(h) > 0)
        rc = take_slot(h, pid, comm);
    gpulet_region_unlock(h);
    if (rc == -ENOSPC)
        return fail(err, errlen, rc, "the region has no free slot: %d live processes attached",
                    GPULET_MAX_SLOTS);
    if (rc < 0)
        return fail(err, errlen, rc, "cannot lock a region slot: %s", strerror(-rc));
    return 0;
}

int gpulet_region_detach(struct gpulet_handle *h)
{
    if (h == NULL || h->region == NULL || h->slot < 0)
        return -EINVAL;
    int rc = gpulet_region_lock(h);
    if (rc == 0) {
        memset(&h->region->slot[h->slot], 0, sizeof h->region->slot[h->slot]);
        bump_generation(h->region);
    }
    /* Without the lock the slot stays taken; dropping its byte lets the next reap free it. */
    if (h->fd >= 0)
        slot_lock(h->fd, h->slot, F_UNLCK);
    if (rc == 0)
        gpulet_region_unlock(h);
    h->slot = -1;
    return rc;
}

int gpulet_region_reap(struct gpulet_handle *h)
{
    int rc = gpulet_region_lock(h);
    if (rc != 0)
        return rc;
    rc = reap_locked(h);
    gpulet_region_unlock(h);
    return rc;
}

/* The region's device count, read once and clamped: the file is writable by every process
 * of the container, and `dev` indexes arrays of GPULET_MAX_DEVICES. */
static uint32_t region_devices(const struct gpulet_region *r)
{
    uint32_t n = __atomic_load_n(&r->devices, __ATOMIC_RELAXED);
    return n < GPULET_MAX_DEVICES ? n : GPULET_MAX_DEVICES;
}

static bool valid_device(const struct gpulet_handle *h, uint32_t dev)
{
    return h != NULL && h->region != NULL && dev < region_devices(h->region);
}

/* The container's charge on `dev`, saturating; the caller holds the region lock. */
static uint64_t total_locked(const struct gpulet_region *r, uint32_t dev)
{
    uint64_t total = 0;
    for (int i = 0; i < GPULET_MAX_SLOTS; i++) {
        uint64_t u = r->slot[i].pid != 0 ? r->slot[i].used[dev] : 0;
        total = u > UINT64_MAX - total ? UINT64_MAX : total + u;
    }
    return total;
}

static bool fits(uint64_t total, uint64_t own, uint64_t bytes, uint64_t cap)
{
    return total <= cap && bytes <= cap - total && bytes <= UINT64_MAX - own;
}

int gpulet_region_reserve(struct gpulet_handle *h, uint32_t dev, uint64_t bytes, uint64_t cap,
                          uint64_t *used_after)
{
    if (!valid_device(h, dev) || h->slot < 0)
        return -EINVAL;
    int rc = gpulet_region_lock(h);
    if (rc != 0)
        return rc;
    uint64_t *own = &h->region->slot[h->slot].used[dev];
    uint64_t total = total_locked(h->region, dev);
    if (!fits(total, *own, bytes, cap) && reap_locked(h) > 0)
        total = total_locked(h->region, dev);
    if (fits(total, *own, bytes, cap)) {
        *own += bytes;
        total += bytes;
    } else {
        rc = -ENOMEM;
    }
    if (used_after != NULL)
        *used_after = total;
    gpulet_region_unlock(h);
    return rc;
}

void gpulet_region_release(struct gpulet_handle *h, uint32_t dev, uint64_t bytes)
{
    if (!valid_device(h, dev) || h->slot < 0 || gpulet_region_lock(h) != 0)
        return;
    uint64_t *own = &h->region->slot[h->slot].used[dev];
    *own = *own > bytes ? *own - bytes : 0;
    gpulet_region_unlock(h);
}

uint64_t gpulet_region_used(struct gpulet_handle *h, uint32_t dev)
{
    if (!valid_device(h, dev) || gpulet_region_lock(h) != 0)
        return 0;
    uint64_t total = total_locked(h->region, dev);
    gpulet_region_unlock(h);
    return total;
}

int gpulet_region_set_feedback(struct gpulet_handle *h, uint32_t dev, uint32_t util_permille,
                               uint64_t stamp_ns)
{
    if (!valid_device(h, dev) || util_permille > 1000)
        return -EINVAL;
    struct gpulet_device_shared *d = &h->region->dev[dev];
    __atomic_store_n(&d->util_permille, util_permille, __ATOMIC_RELAXED);
    __atomic_store_n(&d->util_stamp_ns, stamp_ns, __ATOMIC_RELEASE);
    return 0;
}

int gpulet_region_snapshot(struct gpulet_handle *h, struct gpulet_snapshot *out)
{
    if (h == NULL || h->region == NULL || out == NULL)
        return -EINVAL;
    int rc = gpulet_region_lock_within(h, GPULET_READ_LOCK_NS);
    if (rc != 0)
        return rc;
    const struct gpulet_region *r = h->region;
    memset(out, 0, sizeof *out);
    out->devices = region_devices(r);
    out->generation = __atomic_load_n(&r->generation, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < out->devices; i++) {
        const struct gpulet_device_shared *s = &r->dev[i];
        struct gpulet_device_shared *d = &out->dev[i];
        memcpy(d->uuid, s->uuid, GPULET_UUID_LEN); /* these three never change */
        d->memory_bytes = s->memory_bytes;
        d->core_percent = s->core_percent;
        d->util_stamp_ns = __atomic_load_n(&s->util_stamp_ns, __ATOMIC_ACQUIRE);
        d->util_permille = __atomic_load_n(&s->util_permille, __ATOMIC_RELAXED);
        d->pace_ns = __atomic_load_n(&s->pace_ns, __ATOMIC_RELAXED);
        d->throttled_ns = __atomic_load_n(&s->throttled_ns, __ATOMIC_RELAXED);
        d->launches = __atomic_load_n(&s->launches, __ATOMIC_RELAXED);
        d->busy_ns = __atomic_load_n(&s->busy_ns, __ATOMIC_RELAXED);
        out->used[i] = total_locked(r, i);
    }
    for (int i = 0; i < GPULET_MAX_SLOTS; i++) {
        const struct gpulet_slot *s = &r->slot[i];
        if (s->pid == 0)
            continue;
        struct gpulet_proc_usage *p = &out->proc[out->procs++];
        p->pid = s->pid;
        p->slot = i;
        memcpy(p->comm, s->comm, GPULET_COMM_LEN);
        p->comm[GPULET_COMM_LEN - 1] = '\0';
        memcpy(p->used, s->used, sizeof p->used);
    }
    gpulet_region_unlock(h);
    return 0;
}

/* ---- the agent's reader: a region as untrusted input ---------------------------------- */

_Static_assert(offsetof(struct gpulet_device_shared, util_stamp_ns) ==
                   offsetof(struct gpulet_device_shared, util_permille) + 4,
               "the feedback is one write of util_permille and util_stamp_ns");
_Static_assert(offsetof(struct gpulet_device_shared, share_stamp_ns) ==
                   offsetof(struct gpulet_device_shared, share_permille) + 4,
               "the share is one write of share_permille and share_stamp_ns");

#define MAX_BYTES (MAX_MIB * MIB)

/* What a file that is not a regular file is, for the problem line. */
static const char *not_regular(mode_t mode)
{
    if (S_ISLNK(mode))
        return "is a symbolic link";
    if (S_ISFIFO(mode))
        return "is a FIFO, not a regular file";
    if (S_ISCHR(mode))
        return "is a character device, not a regular file";
    if (S_ISBLK(mode))
        return "is a block device, not a regular file";
    if (S_ISSOCK(mode))
        return "is a socket, not a regular file";
    if (S_ISDIR(mode))
        return "is a directory, not a regular file";
    return "is not a regular file";
}

/* pread all of `len` at `offset`, or -errno; a short count is returned as is. */
static ssize_t pread_full(int fd, void *buf, size_t len, off_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, offset + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* Why the header's magic or version says this is not a region this build reads, or 0. */
static int check_head(const char *path, uint64_t magic, uint32_t version, char *err,
                      size_t errlen)
{
    if (magic != GPULET_REGION_MAGIC)
        return fail(err, errlen, -EINVAL, "region %s is not a gpulet region (magic 0x%016llx)",
                    path, (unsigned long long)magic);
    if (version != GPULET_REGION_VERSION)
        return fail(err, errlen, -EINVAL, "region %s has version %u; this build reads version %u",
                    path, version, GPULET_REGION_VERSION);
    return 0;
}

/* Open the region at `path` for `flags` (O_RDONLY or O_RDWR) when, and only when, it is a
 * regular file of exactly sizeof(struct gpulet_region) bytes that starts with this build's
 * magic and version. The last component is looked at without following it and without
 * opening it for I/O (O_PATH | O_NOFOLLOW: nothing of a FIFO, a socket or a device node
 * runs), and the file then opened is that same file, through its /proc/self/fd link rather
 * than its name, which the container may change in between. O_NONBLOCK: a lease the
 * container holds on a file of its own fails the open at once instead of blocking it for
 * the lease-break time (45 s by default). As gpulet_region_open does, the magic and version
 * are checked before the length: another version may have another length. Returns the
 * descriptor, or -errno with one line in err. */
static int open_untrusted(const char *path, int flags, char *err, size_t errlen)
{
    const size_t want = sizeof(struct gpulet_region);
    struct stat st;
    char link[64];
    struct {
        uint64_t magic;
        uint32_t version;
    } head;
    if (path == NULL)
        return fail(err, errlen, -EINVAL, "no region path");
    int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0)
        return fail(err, errlen, -errno, "cannot open region %s: %s", path, strerror(errno));
    int rc = stat_fd(pfd, &st);
    if (rc != 0)
        rc = fail(err, errlen, rc, "cannot open region %s: %s", path, strerror(-rc));
    else if (!S_ISREG(st.st_mode))
        rc = fail(err, errlen, S_ISLNK(st.st_mode) ? -ELOOP : -EINVAL, "region %s %s", path,
                  not_regular(st.st_mode));
    if (rc != 0) {
        close(pfd);
        return rc;
    }
    snprintf(link, sizeof link, "/proc/self/fd/%d", pfd);
    int fd = open(link, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    int saved = errno;
    close(pfd);
    if (fd < 0)
        return fail(err, errlen, -saved, "cannot open region %s: %s%s", path, strerror(saved),
                    saved == EWOULDBLOCK ? " (a lease is held on it)" : "");
    ssize_t n = pread_full(fd, &head, sizeof head, 0);
    rc = n < 0 ? (int)n : stat_fd(fd, &st);
    if (rc != 0)
        rc = fail(err, errlen, rc, "cannot read region %s: %s", path, strerror(-rc));
    else if (n >= 8 && head.magic != GPULET_REGION_MAGIC)
        rc = check_head(path, head.magic, head.version, err, errlen);
    else if (n >= 12 && head.version != GPULET_REGION_VERSION)
        rc = check_head(path, head.magic, head.version, err, errlen);
    else if (st.st_size < 0 || (unsigned long long)st.st_size != want)
        rc = fail(err, errlen, -EINVAL, "region %s is %lld bytes, expected %zu", path,
                  (long long)st.st_size, want);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    return fd;
}

__attribute__((format(printf, 2, 3))) static void problem(struct gpulet_inspection *out,
                                                          const char *fmt, ...)
{
    if (out->problems < GPULET_MAX_PROBLEMS) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->problem[out->problems], GPULET_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    if (out->problems < UINT32_MAX)
        out->problems++;
}

/* The first `n` bytes of `s` (up to a NUL) with every byte outside printable ASCII, and the
 * quote, as '?': the file's text is quoted back into logs and terminals. */
static void printable(char *dst, const char *s, size_t n)
{
    size_t i = 0;
    for (; i < n && s[i] != '\0'; i++)
        dst[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\'' ? s[i] : '?';
    dst[i] = '\0';
}

static uint64_t add_saturating(uint64_t a, uint64_t b, bool *over)
{
    if (b > UINT64_MAX - a) {
        *over = true;
        return UINT64_MAX;
    }
    return a + b;
}

/* A device record against its grant `e`, or (NULL) against the limits file's rules. */
static void check_device(const struct gpulet_device_shared *d, uint32_t i,
                         const struct gpulet_limit *e, struct gpulet_device_shared *o,
                         struct gpulet_inspection *out)
{
    char quoted[GPULET_UUID_LEN];
    size_t n = strnlen(d->uuid, GPULET_UUID_LEN);
    printable(quoted, d->uuid, n < GPULET_UUID_LEN ? n : GPULET_UUID_LEN - 1);
    if (e != NULL) {
        if (n == GPULET_UUID_LEN || strcmp(d->uuid, e->uuid) != 0)
            problem(out, "device %u: uuid '%s%s', granted '%s'", i, quoted,
                    n == GPULET_UUID_LEN ? "..." : "", e->uuid);
        if (d->memory_bytes != e->memory_bytes)
            problem(out, "device %u: memory_bytes %llu, granted %llu", i,
                    (unsigned long long)d->memory_bytes, (unsigned long long)e->memory_bytes);
        if (d->core_percent != e->core_percent)
            problem(out, "device %u: core_percent %u, granted %u", i, d->core_percent,
                    e->core_percent);
        memcpy(o->uuid, e->uuid, GPULET_UUID_LEN);
        o->memory_bytes = e->memory_bytes;
        o->core_percent = e->core_percent;
    } else {
        const char *why = n == GPULET_UUID_LEN ? "is not NUL-terminated" : uuid_problem(d->uuid, n);
        if (why != NULL)
            problem(out, "device %u: uuid '%s' %s", i, quoted, why);
        if (d->memory_bytes % MIB != 0 || d->memory_bytes < MIB || d->memory_bytes > MAX_BYTES)
            problem(out, "device %u: memory_bytes %llu is not 1..%llu whole MiB", i,
                    (unsigned long long)d->memory_bytes, MAX_MIB);
        if (d->core_percent < 1 || d->core_percent > 100)
            problem(out, "device %u: core_percent %u is not in 1..100", i, d->core_percent);
        memcpy(o->uuid, quoted, sizeof quoted);
        o->memory_bytes = d->memory_bytes;
        o->core_percent = d->core_percent;
    }
    if (d->util_permille > 1000)
        problem(out, "device %u: util_permille %u is not in 0..1000", i, d->util_permille);
    o->util_permille = d->util_permille > 1000 ? 1000 : d->util_permille;
    o->util_stamp_ns = d->util_stamp_ns;
    o->pace_ns = d->pace_ns;
    o->throttled_ns = d->throttled_ns;
    o->launches = d->launches;
    o->busy_ns = d->busy_ns;
}

/* Everything in the private copy `r`, against `expected` (or NULL); `fd` answers which
 * slots' owners are alive. Only ever indexes below GPULET_MAX_DEVICES and GPULET_MAX_SLOTS,
 * whatever the copy's counts say. */
static void check_copy(const struct gpulet_region *r, const struct gpulet_limits *expected,
                       int fd, struct gpulet_inspection *out)
{
    struct gpulet_snapshot *u = &out->usage;
    uint32_t ndev = expected != NULL ? expected->count
                    : r->devices < GPULET_MAX_DEVICES ? r->devices
                                                       : GPULET_MAX_DEVICES;
    bool over[GPULET_MAX_DEVICES] = {false};
    u->devices = ndev;
    u->generation = r->generation;
    if (r->size != sizeof *r)
        problem(out, "size is %u, expected %zu", r->size, sizeof *r);
    if (expected != NULL && r->devices != expected->count)
        problem(out, "devices is %u, granted %u", r->devices, expected->count);
    else if (expected == NULL && (r->devices < 1 || r->devices > GPULET_MAX_DEVICES))
        problem(out, "devices is %u, not in 1..%d", r->devices, GPULET_MAX_DEVICES);
    if (r->slots != GPULET_MAX_SLOTS)
        problem(out, "slots is %u, expected %d", r->slots, GPULET_MAX_SLOTS);
    for (uint32_t i = 0; i < ndev; i++)
        check_device(&r->dev[i], i, expected != NULL ? &expected->dev[i] : NULL, &u->dev[i],
                     out);
    for (int i = 0; i < GPULET_MAX_SLOTS; i++) {
        const struct gpulet_slot *s = &r->slot[i];
        uint64_t any = 0; /* every charge or'ed: one pass the compiler vectorises */
        for (int d = 0; d < GPULET_MAX_DEVICES; d++)
            any |= s->used[d];
        if (s->pid == 0) {
            if (any != 0)
                problem(out, "slot %d: free (pid 0) but holds charges", i);
            continue;
        }
        if (s->pid < 0)
            problem(out, "slot %d: pid %d is not a process id", i, (int)s->pid);
        for (uint32_t d = ndev; d < GPULET_MAX_DEVICES; d++) {
            if (s->used[d] != 0) {
                problem(out, "slot %d: %llu bytes charged on device %u, which is not %s", i,
                        (unsigned long long)s->used[d], d,
                        expected != NULL ? "granted" : "in the region");
                break;
            }
        }
        if (!slot_held(fd, i))
            continue; /* its owner is gone: the next reap frees it, charges and all */
        struct gpulet_proc_usage *p = &u->proc[u->procs++];
        p->pid = s->pid;
        p->slot = i;
        printable(p->comm, s->comm, GPULET_COMM_LEN - 1);
        for (uint32_t d = 0; d < ndev; d++) {
            p->used[d] = s->used[d];
            u->used[d] = add_saturating(u->used[d], s->used[d], &over[d]);
        }
    }
    for (uint32_t d = 0; d < ndev; d++) {
        if (over[d])
            problem(out, "device %u: slots' charges add up past 2^64", d);
        uint64_t cap = u->dev[d].memory_bytes;
        if (u->used[d] > cap)
            problem(out, "device %u: %llu bytes charged, over the %s %llu", d,
                    (unsigned long long)u->used[d], expected != NULL ? "granted" : "cap",
                    (unsigned long long)cap);
    }
}

/* Read the region open at `fd` into `out`, which the caller zeroed, checked against
 * `expected`. */
static int inspect_fd(const char *path, int fd, const struct gpulet_limits *expected,
                      struct gpulet_inspection *out)
{
    /* One byte more than a region: a file that grew after the fstat reads long. */
    struct copy {
        struct gpulet_region r;
        char more[1];
    };
    const size_t want = sizeof(struct gpulet_region);
    char *line = out->problem[0];
    int rc = 0;
    struct copy *c = malloc(sizeof *c);
    if (c == NULL) {
        out->problems = 1;
        return fail(line, GPULET_ERR_LEN, -ENOMEM, "cannot read region %s: out of memory", path);
    }
    /* Nothing is locked, so a read may meet a writer half-way (a slot being zeroed, a charge
     * moving between two slots): a copy that shows problems is taken once more, and the
     * second one is the answer. Tampering shows in both. */
    for (int attempt = 0; attempt < 2; attempt++) {
        ssize_t n = pread_full(fd, c, want + 1, 0);
        if (attempt > 0)
            memset(out, 0, sizeof *out); /* the callers hand it over zeroed */
        if (n < 0)
            rc = fail(line, GPULET_ERR_LEN, (int)n, "cannot read region %s: %s", path,
                      strerror((int)-n));
        else if ((size_t)n != want)
            rc = fail(line, GPULET_ERR_LEN, -EINVAL, "region %s is %zd bytes, expected %zu",
                      path, n, want);
        else
            rc = check_head(path, c->r.magic, c->r.version, line, GPULET_ERR_LEN);
        if (rc != 0) {
            out->problems = 1;
            break;
        }
        out->readable = 1;
        check_copy(&c->r, expected, fd, out);
        if (out->problems == 0)
            break;
    }
    free(c);
    return rc;
}

int gpulet_region_inspect(const char *path, const struct gpulet_limits *expected,
                          struct gpulet_inspection *out)
{
    if (out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    char *line = out->problem[0];
    int rc = expected != NULL ? check_limits(expected, line, GPULET_ERR_LEN) : 0;
    int fd = rc == 0 ? open_untrusted(path, O_RDONLY, line, GPULET_ERR_LEN) : rc;
    if (fd < 0) {
        out->problems = 1;
        return fd;
    }
    rc = inspect_fd(path, fd, expected, out);
    close(fd);
    return rc;
}

/* The offset in the file of field `field` (a permille followed by its stamp) of device
 * `dev` (< GPULET_MAX_DEVICES). */
static off_t device_offset(uint32_t dev, size_t field)
{
    return (off_t)(offsetof(struct gpulet_region, dev) + dev * sizeof(struct gpulet_device_shared) +
                   field);
}

/* One pwrite of a permille and its stamp at `offset` of the region open at `fd`; `what` names
 * it in the error. */
static int write_stamped_fd(const char *path, int fd, off_t offset, uint32_t permille,
                            uint64_t stamp_ns, const char *what, char *err, size_t errlen)
{
    unsigned char value[12];
    memcpy(value, &permille, 4);
    memcpy(value + 4, &stamp_ns, 8);
    ssize_t n;
    do
        n = pwrite(fd, value, sizeof value, offset);
    while (n < 0 && errno == EINTR);
    int why = n < 0 ? errno : EIO; /* short, for 12 bytes inside the file: a full disk */
    if (n != (ssize_t)sizeof value)
        return fail(err, errlen, -why, "cannot write %s to region %s: %s", what, path,
                    strerror(why));
    return 0;
}

/* One pwrite of util_permille and util_stamp_ns for device `dev` to the region open at `fd`. */
static int write_feedback_fd(const char *path, int fd, uint32_t dev, uint32_t util_permille,
                             uint64_t stamp_ns, char *err, size_t errlen)
{
    off_t at = device_offset(dev, offsetof(struct gpulet_device_shared, util_permille));
    return write_stamped_fd(path, fd, at, util_permille, stamp_ns, "feedback", err, errlen);
}

/* A device index of the grant (already checked). */
static int check_index(const struct gpulet_limits *expected, uint32_t dev, char *err,
                       size_t errlen)
{
    if (dev >= expected->count)
        return fail(err, errlen, -EINVAL, "device index %u is not in 0..%u (the grant's devices)",
                    dev, expected->count - 1);
    return 0;
}

/* Opens the region at `path` as untrusted input and writes one stamped permille at `offset`
 * (write_stamped_fd). */
static int write_stamped(const char *path, off_t offset, uint32_t permille, uint64_t stamp_ns,
                         const char *what, char *err, size_t errlen)
{
    int fd = open_untrusted(path, O_RDWR, err, errlen);
    if (fd < 0)
        return fd;
    int rc = write_stamped_fd(path, fd, offset, permille, stamp_ns, what, err, errlen);
    close(fd);
    return rc;
}

/* The checks of a feedback's device and value against the grant (already checked). */
static int check_feedback(const struct gpulet_limits *expected, uint32_t dev,
                          uint32_t util_permille, char *err, size_t errlen)
{
    int rc = check_index(expected, dev, err, errlen);
    if (rc != 0)
        return rc;
    if (util_permille > 1000)
        return fail(err, errlen, -EINVAL, "utilisation %u permille is not in 0..1000",
                    util_permille);
    return 0;
}

int gpulet_region_write_feedback(const char *path, const struct gpulet_limits *expected,
                                 uint32_t dev, uint32_t util_permille, uint64_t stamp_ns,
                                 char *err, size_t errlen)
{
    int rc = check_limits(expected, err, errlen);
    if (rc == 0)
        rc = check_feedback(expected, dev, util_permille, err, errlen);
    if (rc != 0)
        return rc;
    off_t at = device_offset(dev, offsetof(struct gpulet_device_shared, util_permille));
    return write_stamped(path, at, util_permille, stamp_ns, "feedback", err, errlen);
}

int gpulet_region_write_share(const char *path, const struct gpulet_limits *expected,
                              uint32_t dev, uint32_t share_permille, uint64_t stamp_ns,
                              char *err, size_t errlen)
{
    int rc = check_limits(expected, err, errlen);
    if (rc == 0)
        rc = check_index(expected, dev, err, errlen);
    if (rc == 0 && !(expected->dev[dev].flags & GPULET_LIMIT_BATCH))
        rc = fail(err, errlen, -EINVAL, "device %s is not a batch slice's: it has no share",
                  expected->dev[dev].uuid);
    if (rc == 0 && share_permille > 1000)
        rc = fail(err, errlen, -EINVAL, "share %u permille is not in 0..1000", share_permille);
    if (rc != 0)
        return rc;
    off_t at = device_offset(dev, offsetof(struct gpulet_device_shared, share_permille));
    return write_stamped(path, at, share_permille, stamp_ns, "share", err, errlen);
}

/* Whether an open for writing that failed with `rc` may still succeed for reading: the file
 * is read-only to us (mode, attribute, mount), being executed, or leased for reading. */
static bool read_only_may_open(int rc)
{
    return rc == -EACCES || rc == -EPERM || rc == -EROFS || rc == -ETXTBSY ||
           rc == -EWOULDBLOCK;
}

int gpulet_region_inspect_feedback(const char *path, const struct gpulet_limits *expected,
                                   const uint32_t *util_permille, uint64_t stamp_ns,
                                   struct gpulet_inspection *out, int *fed_back, char *err,
                                   size_t errlen)
{
    int ignored;
    bool asked = false;
    if (fed_back == NULL)
        fed_back = &ignored;
    *fed_back = 0;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL)
        return *fed_back = fail(err, errlen, -EINVAL, "no inspection to fill");
    memset(out, 0, sizeof *out);
    char *line = out->problem[0];
    int rc = expected != NULL ? check_limits(expected, line, GPULET_ERR_LEN) : 0;
    if (rc == 0 && util_permille != NULL && expected == NULL)
        rc = fail(line, GPULET_ERR_LEN, -EINVAL, "feedback without the granted limits");
    for (uint32_t d = 0; rc == 0 && util_permille != NULL && d < expected->count; d++) {
        if (util_permille[d] == GPULET_NO_FEEDBACK)
            continue;
        rc = check_feedback(expected, d, util_permille[d], line, GPULET_ERR_LEN);
        asked = true;
    }
    if (rc != 0) {
        out->problems = 1;
        *fed_back = fail(err, errlen, rc, "%s", line);
        return rc;
    }
    /* For writing only when there is something to write; a file that cannot be opened for
     * writing but can for reading is still inspected (gpulet_region_inspect's answer). */
    int fd = open_untrusted(path, asked ? O_RDWR : O_RDONLY, line, GPULET_ERR_LEN);
    if (fd < 0 && asked) {
        *fed_back = fail(err, errlen, fd, "%s", line);
        asked = false;
        if (read_only_may_open(fd))
            fd = open_untrusted(path, O_RDONLY, line, GPULET_ERR_LEN);
        if (fd >= 0)
            line[0] = '\0'; /* readable after all: `out` is as zeroed as inspect_fd wants */
    }
    if (fd < 0) {
        out->problems = 1;
        return fd;
    }
    rc = inspect_fd(path, fd, expected, out);
    if (asked && rc != 0)
        *fed_back = fail(err, errlen, rc, "%s", line);
    else if (asked && out->problems != 0)
        *fed_back = fail(err, errlen, -EBADMSG,
                         "feedback not written to region %s: it is not what was granted", path);
    asked = asked && rc == 0 && out->problems == 0;
    for (uint32_t d = 0; asked && d < expected->count; d++) {
        if (util_permille[d] == GPULET_NO_FEEDBACK)
            continue;
        *fed_back = write_feedback_fd(path, fd, d, util_permille[d], stamp_ns, err, errlen);
        asked = *fed_back == 0;
    }
    close(fd);
    return rc;
}
