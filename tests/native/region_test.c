/*
 * region_test.c: native/limiter/region.c on its own, built with -Wall -Wextra -Werror and
 * -fsanitize=address,undefined by tests/unit/test_region.py. Usage: region_test DIR [FUZZ
 * [SEED]] (DIR: an empty directory it may write in; FUZZ: iterations of the reader's fuzz
 * loop, 3000 by default; SEED: its xorshift seed, the time by default). Prints "ok" and exits
 * 0, or names the failed check (and the seed) and exits 1.
 */
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1ull << 20)

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed: %s (err: %s)\n", __FILE__, __LINE__, #cond, \
                    err);                                                                      \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static char err[GPULET_ERR_LEN];
static char path[4096];
static const char *dir;

static const char *at(const char *name)
{
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static int parse(const char *text, struct gpulet_limits *l)
{
    err[0] = '\0';
    return gpulet_limits_parse(text, strlen(text), l, err, sizeof err);
}

static void bad_limits(const char *text, const char *message)
{
    struct gpulet_limits l;
    CHECK(parse(text, &l) == -EINVAL);
    CHECK(strstr(err, message) != NULL);
}

static void test_limits(struct gpulet_limits *l)
{
    char buf[4096];
    struct gpulet_limits again;
    CHECK(parse("# hi\n\ngpulet-limits 1\n  # on\ndevice GPU-a 1024 50\ndevice GPU-b\t8 100", l) ==
          0);
    CHECK(l->count == 2 && strcmp(l->dev[1].uuid, "GPU-b") == 0);
    CHECK(l->dev[0].memory_bytes == 1024 * MIB && l->dev[0].core_percent == 50);
    int n = gpulet_limits_format(l, buf, sizeof buf);
    CHECK(n > 0 && (size_t)n == strlen(buf));
    CHECK(parse(buf, &again) == 0 && memcmp(l, &again, sizeof again) == 0);
    CHECK(gpulet_limits_format(l, buf, 10) == -ENOSPC);

    bad_limits("", "no 'gpulet-limits 1' line");
    bad_limits("gpulet-limits 1\n", "no device line");
    bad_limits("gpulet-limits 2\ndevice a 1 1\n", "line 1: unsupported limits version 2");
    bad_limits("device a 1 1\n", "line 1: expected 'gpulet-limits 1' first");
    bad_limits("gpulet-limits 1\ndevice a 1 150\n", "line 2: core percent 150 is not in 1..100");
    bad_limits("gpulet-limits 1\ndevice a 0 1\n", "memory 0 MiB is not in 1..");
    bad_limits("gpulet-limits 1\ndevice a 99999999999999999999999 1\n", "is not in 1..");
    bad_limits("gpulet-limits 1\ndevice a -1 1\n", "memory '-1' is not a number");
    bad_limits("gpulet-limits 1\ndevice a$ 1 1\n", "outside [A-Za-z0-9-]");
    bad_limits("gpulet-limits 1\ndevice a 1 1\ndevice a 2 2\n", "line 3: duplicate uuid a");
    bad_limits("gpulet-limits 1\ndevice a 1 1 x\n", "expected 'device <uuid>");
    bad_limits("gpulet-limits 1\nfoo a 1 1\n", "unknown keyword 'foo'");
    bad_limits("gpulet-limits 1\r\ndevice a 1 1\n", "line 1: unexpected byte 0x0d");

    char many[2048] = "gpulet-limits 1\n";
    for (int i = 0; i < GPULET_MAX_DEVICES + 1; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "device g%d 1 1\n", i);
    bad_limits(many, "line 18: more than 16 devices");

    CHECK(gpulet_limits_read(at("absent"), &again, err, sizeof err) == -ENOENT);
    CHECK(strstr(err, "absent") != NULL && strstr(err, "No such file") != NULL);
    int fd = open(at("big"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    static char big[70000];
    memset(big, '#', sizeof big);
    CHECK(fd >= 0 && write(fd, big, sizeof big) == (ssize_t)sizeof big && close(fd) == 0);
    CHECK(gpulet_limits_read(at("big"), &again, err, sizeof err) == -EFBIG);
}

static void write_bytes(const char *file, off_t offset, const void *bytes, size_t len)
{
    int fd = open(file, O_WRONLY);
    CHECK(fd >= 0 && pwrite(fd, bytes, len, offset) == (ssize_t)len && close(fd) == 0);
}

static void copy_region(const char *to)
{
    static char buf[sizeof(struct gpulet_region)];
    char from[4096];
    snprintf(from, sizeof from, "%s/region", dir);
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    CHECK(in >= 0 && out >= 0 && read(in, buf, sizeof buf) == (ssize_t)sizeof buf);
    CHECK(write(out, buf, sizeof buf) == (ssize_t)sizeof buf && close(in) == 0 && close(out) == 0);
}

static void bad_region(void (*spoil)(const char *), const char *message)
{
    struct gpulet_handle h;
    char file[4096];
    snprintf(file, sizeof file, "%s/spoiled", dir);
    copy_region(file);
    spoil(file);
    CHECK(gpulet_region_open(file, &h, err, sizeof err) == -EINVAL);
    CHECK(strstr(err, message) != NULL);
    CHECK(h.region == NULL && h.fd == -1);
}

static void spoil_magic(const char *f) { write_bytes(f, 0, "NOTAREGN", 8); }
static void spoil_version(const char *f)
{
    uint32_t v = 2;
    write_bytes(f, 8, &v, sizeof v);
}
static void spoil_short(const char *f) { CHECK(truncate(f, 100) == 0); }
static void spoil_long(const char *f) { CHECK(truncate(f, sizeof(struct gpulet_region) + 1) == 0); }

static void test_files(const struct gpulet_limits *l)
{
    struct stat st;
    struct gpulet_handle h;
    CHECK(gpulet_region_create(at("region"), l, err, sizeof err) == 0);
    CHECK(stat(at("region"), &st) == 0 && (st.st_mode & 0777) == 0666);
    CHECK(st.st_size == sizeof(struct gpulet_region));
    CHECK(gpulet_region_open(at("region"), &h, err, sizeof err) == 0);
    CHECK(gpulet_region_matches(&h, l, err, sizeof err) == 0);
    CHECK(h.region->devices == 2 && h.region->slots == GPULET_MAX_SLOTS && h.slot == -1);
    gpulet_region_close(&h);
    gpulet_region_close(&h); /* twice is fine */

    bad_region(spoil_magic, "is not a gpulet region");
    bad_region(spoil_version, "has region version 2; this build reads version 1");
    bad_region(spoil_short, "is truncated: 100 bytes, expected");
    bad_region(spoil_long, "bytes, expected");
    CHECK(gpulet_region_open(at("absent"), &h, err, sizeof err) == -ENOENT);

    struct gpulet_limits wrong = *l;
    wrong.dev[1].core_percent = 0;
    CHECK(gpulet_region_create(at("wrong"), &wrong, err, sizeof err) == -EINVAL);
    CHECK(strstr(err, "core percent 0") != NULL && access(at("wrong"), F_OK) != 0);
}

/* A child that attaches, charges `bytes`, optionally takes the lock, and then waits to be
 * killed. Returns its pid once it is ready. */
static pid_t child(uint64_t bytes, int hold_lock)
{
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct gpulet_handle h;
        close(pipefd[0]);
        if (gpulet_region_open(at("region"), &h, err, sizeof err) != 0 ||
            gpulet_region_attach(&h, getpid(), "child", err, sizeof err) != 0 ||
            gpulet_region_reserve(&h, 0, bytes, 1024 * MIB, NULL) != 0)
            _exit(3);
        if (hold_lock && gpulet_region_lock(&h) != 0)
            _exit(4);
        if (write(pipefd[1], "r", 1) != 1)
            _exit(5);
        for (;;)
            pause();
    }
    char c;
    close(pipefd[1]);
    CHECK(read(pipefd[0], &c, 1) == 1);
    close(pipefd[0]);
    return pid;
}

static void kill_child(pid_t pid)
{
    int status;
    CHECK(kill(pid, SIGKILL) == 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
}

static void test_accounting(const struct gpulet_limits *l)
{
    struct gpulet_handle a, b;
    uint64_t total;
    struct gpulet_snapshot *snap = calloc(1, sizeof *snap);
    CHECK(snap != NULL);
    CHECK(gpulet_region_create(at("region"), l, err, sizeof err) == 0);
    CHECK(gpulet_region_open(at("region"), &a, err, sizeof err) == 0);
    CHECK(gpulet_region_open(at("region"), &b, err, sizeof err) == 0);
    CHECK(gpulet_region_reserve(&a, 0, 1, 1, NULL) == -EINVAL); /* not attached */
    CHECK(gpulet_region_attach(&a, getpid(), "a", err, sizeof err) == 0 && a.slot == 0);
    CHECK(gpulet_region_attach(&a, getpid(), "a", err, sizeof err) == -EINVAL);
    CHECK(gpulet_region_attach(&b, getpid(), "b", err, sizeof err) == 0 && b.slot == 1);
    CHECK(gpulet_region_reserve(&a, 2, 1, 1, NULL) == -EINVAL); /* no such device */

    uint64_t cap = 1024 * MIB;
    CHECK(gpulet_region_reserve(&a, 0, 600 * MIB, cap, &total) == 0 && total == 600 * MIB);
    CHECK(gpulet_region_reserve(&b, 0, 425 * MIB, cap, &total) == -ENOMEM && total == 600 * MIB);
    CHECK(gpulet_region_reserve(&b, 0, 424 * MIB, cap, &total) == 0 && total == cap);
    CHECK(gpulet_region_reserve(&b, 0, UINT64_MAX, UINT64_MAX, NULL) == -ENOMEM);
    CHECK(gpulet_region_used(&a, 0) == cap && gpulet_region_used(&a, 1) == 0);
    gpulet_region_release(&a, 0, 10000 * MIB); /* saturates */
    CHECK(gpulet_region_used(&b, 0) == 424 * MIB);

    CHECK(gpulet_region_set_feedback(&a, 1, 1001, 5) == -EINVAL);
    CHECK(gpulet_region_set_feedback(&a, 1, 375, 5) == 0);
    CHECK(gpulet_region_snapshot(&a, snap) == 0);
    CHECK(snap->devices == 2 && snap->procs == 2 && snap->used[0] == 424 * MIB);
    CHECK(snap->dev[1].util_permille == 375 && snap->dev[1].util_stamp_ns == 5);
    CHECK(snap->proc[1].pid == getpid() && strcmp(snap->proc[1].comm, "b") == 0);
    CHECK(gpulet_region_detach(&b) == 0 && gpulet_region_used(&a, 0) == 0);

    /* A process killed while attached loses its charge: at the next reap, or when a
     * reservation would not fit otherwise. */
    pid_t pid = child(500 * MIB, 0);
    CHECK(gpulet_region_used(&a, 0) == 500 * MIB && gpulet_region_reap(&a) == 0);
    kill_child(pid);
    CHECK(gpulet_region_used(&a, 0) == 500 * MIB);
    CHECK(gpulet_region_reserve(&a, 0, 1000 * MIB, cap, &total) == 0 && total == 1000 * MIB);
    gpulet_region_release(&a, 0, 1000 * MIB);

    /* Killed holding the lock: the next locker takes it over and reaps. */
    pid = child(300 * MIB, 1);
    kill_child(pid);
    CHECK(gpulet_region_lock(&a) == 0);
    gpulet_region_unlock(&a);
    CHECK(gpulet_region_used(&a, 0) == 0);

    /* Every slot taken (one open file description each): the next attach says so. */
    static struct gpulet_handle many[GPULET_MAX_SLOTS];
    for (int i = 0; i < GPULET_MAX_SLOTS - 1; i++) {
        CHECK(gpulet_region_open(at("region"), &many[i], err, sizeof err) == 0);
        CHECK(gpulet_region_attach(&many[i], getpid(), "m", err, sizeof err) == 0);
    }
    CHECK(gpulet_region_attach(&b, getpid(), "b", err, sizeof err) == -ENOSPC);
    CHECK(strstr(err, "no free slot") != NULL);
    gpulet_region_close(&many[7]); /* detaches */
    CHECK(gpulet_region_attach(&b, getpid(), "b", err, sizeof err) == 0 && b.slot == 8);
    for (int i = 0; i < GPULET_MAX_SLOTS - 1; i++)
        gpulet_region_close(&many[i]);
    gpulet_region_close(&a);
    gpulet_region_close(&b);
    free(snap);
}

static void test_private(const struct gpulet_limits *l)
{
    struct gpulet_handle h;
    memset(&h, 0, sizeof h);
    gpulet_region_close(&h); /* a zeroed handle */
    CHECK(gpulet_region_private(l, &h, err, sizeof err) == 0 && h.fd == -1);
    CHECK(gpulet_region_attach(&h, getpid(), "p", err, sizeof err) == 0);
    CHECK(gpulet_region_reserve(&h, 1, 8 * MIB, 8 * MIB, NULL) == 0);
    CHECK(gpulet_region_reserve(&h, 1, 1, 8 * MIB, NULL) == -ENOMEM);
    CHECK(gpulet_region_reap(&h) == 0);
    gpulet_region_close(&h);
}

/* ---- the agent's reader ---------------------------------------------------------------- */

#define SIZE sizeof(struct gpulet_region)
#define DEV_AT(i, field)                                                                       \
    (offsetof(struct gpulet_region, dev) + (i) * sizeof(struct gpulet_device_shared) +        \
     offsetof(struct gpulet_device_shared, field))
#define SLOT_AT(i, field)                                                                      \
    (offsetof(struct gpulet_region, slot) + (i) * sizeof(struct gpulet_slot) +                \
     offsetof(struct gpulet_slot, field))

static struct gpulet_inspection *seen;
static char region_path[4096], orig_path[4096]; /* at() has one buffer: two names at once */

static int inspect(const struct gpulet_limits *expected)
{
    return gpulet_region_inspect(region_path, expected, seen);
}

/* The monitor's one pass: inspect, and give `util` (per device of `expected`) as feedback;
 * *fed gets what the feedback came to. */
static int inspect_feedback(const struct gpulet_limits *expected, const uint32_t *util, int *fed)
{
    return gpulet_region_inspect_feedback(region_path, expected, util, 77, seen, fed, err,
                                          sizeof err);
}

static int has_problem(const char *needle)
{
    for (uint32_t i = 0; i < seen->problems && i < GPULET_MAX_PROBLEMS; i++)
        if (strstr(seen->problem[i], needle) != NULL)
            return 1;
    return 0;
}

static void put(int fd, size_t offset, const void *bytes, size_t len)
{
    CHECK(pwrite(fd, bytes, len, (off_t)offset) == (ssize_t)len);
}

static void put32(int fd, size_t offset, uint32_t v) { put(fd, offset, &v, sizeof v); }
static void put64(int fd, size_t offset, uint64_t v) { put(fd, offset, &v, sizeof v); }

static void test_untrusted(const struct gpulet_limits *l)
{
    struct gpulet_handle h;
    struct gpulet_snapshot *snap = calloc(1, sizeof *snap);
    char saved[64];
    char other[4096];
    CHECK(snap != NULL && (seen = calloc(1, sizeof *seen)) != NULL);
    CHECK(gpulet_region_create(region_path, l, err, sizeof err) == 0);
    CHECK(gpulet_region_open(region_path, &h, err, sizeof err) == 0);
    CHECK(gpulet_region_attach(&h, getpid(), "t", err, sizeof err) == 0);
    CHECK(gpulet_region_reserve(&h, 0, 300 * MIB, 1024 * MIB, NULL) == 0);
    int fd = open(region_path, O_RDWR); /* the tenant's own descriptor */
    CHECK(fd >= 0);

    CHECK(inspect(l) == 0 && seen->readable && seen->problems == 0);
    CHECK(seen->usage.devices == 2 && seen->usage.procs == 1 && seen->usage.used[0] == 300 * MIB);
    CHECK(seen->usage.proc[0].pid == getpid() && strcmp(seen->usage.proc[0].comm, "t") == 0);
    CHECK(inspect(NULL) == 0 && seen->problems == 0 && seen->usage.devices == 2);
    CHECK(gpulet_region_write_feedback(region_path, l, 1, 420, 9, err, sizeof err) == 0);
    CHECK(h.region->dev[1].util_permille == 420 && h.region->dev[1].util_stamp_ns == 9);
    CHECK(gpulet_region_write_feedback(region_path, l, 2, 1, 1, err, sizeof err) == -EINVAL);
    CHECK(strstr(err, "device index 2 is not in 0..1") != NULL);

    /* The monitor's one pass: the devices asked for, written to the file it inspected. */
    int fed = 1;
    uint32_t util[2] = {GPULET_NO_FEEDBACK, 610};
    CHECK(inspect_feedback(l, util, &fed) == 0 && fed == 0 && seen->problems == 0);
    CHECK(seen->usage.procs == 1 && seen->usage.dev[1].util_permille == 420); /* read first */
    CHECK(h.region->dev[1].util_permille == 610 && h.region->dev[1].util_stamp_ns == 77);
    CHECK(h.region->dev[0].util_permille == 0 && h.region->dev[0].util_stamp_ns == 0);
    CHECK(inspect_feedback(l, NULL, &fed) == 0 && fed == 0 && seen->problems == 0);
    util[0] = 1001; /* refused before anything is opened */
    CHECK(inspect_feedback(l, util, &fed) == -EINVAL && fed == -EINVAL && !seen->readable);
    CHECK(seen->problems == 1 && strstr(seen->problem[0], "1001 permille") != NULL);
    CHECK(strstr(err, "1001 permille") != NULL && h.region->dev[0].util_stamp_ns == 0);
    util[0] = 5;
    CHECK(inspect_feedback(NULL, util, &fed) == -EINVAL && fed == -EINVAL);
    CHECK(strstr(err, "without the granted limits") != NULL);
    CHECK(h.region->dev[0].util_stamp_ns == 0 && h.region->dev[1].util_permille == 610);

    /* A device count changed under a mapping reader: clamped, never past the arrays. */
    put32(fd, offsetof(struct gpulet_region, devices), 300);
    CHECK(gpulet_region_snapshot(&h, snap) == 0 && snap->devices == GPULET_MAX_DEVICES);
    CHECK(snap->used[0] == 300 * MIB);
    CHECK(gpulet_region_set_feedback(&h, 20, 1, 1) == -EINVAL);
    CHECK(gpulet_region_set_feedback(&h, 15, 1, 1) == 0);
    CHECK(inspect(l) == 0 && has_problem("devices is 300, granted 2"));
    CHECK(seen->usage.devices == 2 && seen->usage.used[0] == 300 * MIB);
    CHECK(inspect(NULL) == 0 && has_problem("devices is 300, not in 1..16"));
    CHECK(seen->usage.devices == GPULET_MAX_DEVICES);
    util[0] = 5; /* a region with problems is inspected, and given no feedback */
    CHECK(inspect_feedback(l, util, &fed) == 0 && fed == -EBADMSG);
    CHECK(has_problem("devices is 300, granted 2") && seen->readable);
    CHECK(strstr(err, "it is not what was granted") != NULL);
    CHECK(h.region->dev[0].util_stamp_ns == 0 && h.region->dev[1].util_permille == 610);
    CHECK(gpulet_region_write_feedback(region_path, l, 1, 5, 5, err, sizeof err) == 0);
    put32(fd, offsetof(struct gpulet_region, devices), 2);

    /* A scribbled lock word: the bounded wait ends, inspect never waits. */
    CHECK(pread(fd, saved, sizeof saved, offsetof(struct gpulet_region, lock)) == 64);
    put32(fd, offsetof(struct gpulet_region, lock), 1234567);
    CHECK(gpulet_region_lock_within(&h, 50 * 1000 * 1000) == -ETIMEDOUT);
    CHECK(inspect(l) == 0 && seen->problems == 0 && seen->usage.used[0] == 300 * MIB);
    put(fd, offsetof(struct gpulet_region, lock), saved, sizeof saved);
    CHECK(gpulet_region_lock_within(&h, 50 * 1000 * 1000) == 0);
    gpulet_region_unlock(&h);

    /* Device records and slots that are not the grant. */
    put64(fd, DEV_AT(1, memory_bytes), 5);
    put32(fd, DEV_AT(0, util_permille), 7000);
    put64(fd, SLOT_AT(9, used) + 8, 1);
    CHECK(inspect(l) == 0 && seen->problems == 3);
    CHECK(has_problem("device 1: memory_bytes 5, granted 8388608"));
    CHECK(has_problem("device 0: util_permille 7000 is not in 0..1000"));
    CHECK(has_problem("slot 9: free (pid 0) but holds charges"));
    CHECK(seen->usage.dev[1].memory_bytes == 8 * MIB && seen->usage.dev[0].util_permille == 1000);
    put64(fd, SLOT_AT(0, used), UINT64_MAX);
    put32(fd, SLOT_AT(3, pid), 77); /* no process holds slot 3: left out */
    put64(fd, SLOT_AT(3, used), 5);
    CHECK(inspect(l) == 0 && has_problem("over the granted 1073741824"));
    CHECK(seen->usage.used[0] == UINT64_MAX && seen->usage.procs == 1);

    /* Anything but a regular file of the right size is refused, without being opened. */
    CHECK(rename(region_path, orig_path) == 0);
    CHECK(symlink(orig_path, region_path) == 0);
    CHECK(inspect(l) == -ELOOP && !seen->readable && seen->problems == 1);
    CHECK(strstr(seen->problem[0], "is a symbolic link") != NULL);
    CHECK(gpulet_region_write_feedback(region_path, l, 0, 1, 1, err, sizeof err) == -ELOOP);
    util[0] = 9; /* never written through the link: the file it names is the region itself */
    CHECK(inspect_feedback(l, util, &fed) == -ELOOP && fed == -ELOOP && !seen->readable);
    CHECK(strstr(seen->problem[0], "is a symbolic link") != NULL);
    CHECK(strstr(err, "is a symbolic link") != NULL && h.region->dev[0].util_stamp_ns == 0);
    CHECK(unlink(region_path) == 0 && mkfifo(region_path, 0666) == 0);
    CHECK(inspect(l) == -EINVAL && strstr(seen->problem[0], "is a FIFO") != NULL);
    CHECK(unlink(region_path) == 0 && mkdir(region_path, 0777) == 0);
    CHECK(inspect(l) == -EINVAL && strstr(seen->problem[0], "is a directory") != NULL);
    CHECK(rmdir(region_path) == 0 && rename(orig_path, region_path) == 0);
    CHECK(ftruncate(fd, 100) == 0); /* still mapped by h: a mapping reader would SIGBUS */
    CHECK(inspect(l) == -EINVAL && !seen->readable);
    snprintf(other, sizeof other, "region %s/region is 100 bytes, expected %zu", dir, SIZE);
    CHECK(strcmp(seen->problem[0], other) == 0);
    CHECK(gpulet_region_write_feedback(region_path, l, 0, 1, 1, err, sizeof err) == -EINVAL);
    CHECK(strcmp(err, other) == 0);
    CHECK(inspect_feedback(l, util, &fed) == -EINVAL && fed == -EINVAL && !seen->readable);
    CHECK(strcmp(seen->problem[0], other) == 0 && strcmp(err, other) == 0);
    CHECK(inspect(l) == -EINVAL); /* and they wrote nothing */
    CHECK(ftruncate(fd, SIZE) == 0);
    put64(fd, 0, 42);
    CHECK(inspect(l) == -EINVAL && strstr(seen->problem[0], "is not a gpulet region") != NULL);
    CHECK(gpulet_region_inspect(at("absent"), l, seen) == -ENOENT);
    CHECK(strstr(seen->problem[0], "cannot open region") != NULL);

    close(fd);
    /* h's mapping is garbage now; its lock word is zero (ftruncate): close can detach. */
    gpulet_region_close(&h);
    free(snap);
}

/* xorshift64*: reproducible from the seed printed on a failure. */
static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static uint64_t below(uint64_t n) { return rnd() % n; }

/* An offset biased to the parts that matter: header, mutex, device records, slots. */
static size_t fuzz_offset(void)
{
    switch (below(5)) {
    case 0:
        return below(offsetof(struct gpulet_region, lock));
    case 1:
        return offsetof(struct gpulet_region, lock) + below(64);
    case 2:
        return DEV_AT(below(GPULET_MAX_DEVICES), uuid) + below(sizeof(struct gpulet_device_shared));
    case 3:
        return SLOT_AT(below(4), pid) + below(sizeof(struct gpulet_slot));
    default:
        return below(SIZE);
    }
}

static uint64_t fuzz_value(void)
{
    static const uint64_t interesting[] = {0,          1,          2,         16,
                                           17,         255,        256,       300,
                                           100000,     0x7fffffff, 0x80000000, 0xffffffff,
                                           1ull << 32, 1ull << 63, UINT64_MAX, 1234567};
    return below(2) ? interesting[below(sizeof interesting / sizeof interesting[0])] : rnd();
}

/* One random change of the file, as a tenant could make it. */
static void mutate(int fd, const struct gpulet_limits *l)
{
    unsigned char bytes[16];
    size_t off, len;
    uint64_t v;
    struct stat st;
    unsigned what = (unsigned)below(12);
    if (what == 0 && lstat(orig_path, &st) == 0)
        what = 2; /* swapped already in this round */
    switch (what) {
    case 0: /* whole-file swaps: the tenant's processes keep the original mapped */
        CHECK(rename(region_path, orig_path) == 0);
        switch (below(4)) {
        case 0:
            CHECK(symlink(orig_path, region_path) == 0);
            break;
        case 1:
            CHECK(mkfifo(region_path, 0666) == 0);
            break;
        case 2:
            CHECK(mkdir(region_path, 0777) == 0);
            break;
        default:
            CHECK(gpulet_region_create(region_path, l, err, sizeof err) == 0);
            CHECK(truncate(region_path, (off_t)below(2 * SIZE)) == 0);
        }
        return;
    case 1:
        CHECK(ftruncate(fd, (off_t)below(2 * SIZE)) == 0);
        return;
    case 2:
    case 3:
    case 4:
        off = fuzz_offset();
        len = 1 + below(sizeof bytes);
        for (size_t i = 0; i < len; i++)
            bytes[i] = (unsigned char)rnd();
        break;
    case 5:
    case 6:
    case 7:
        off = fuzz_offset() & ~(size_t)3;
        v = fuzz_value();
        len = 4;
        memcpy(bytes, &v, 4);
        break;
    default:
        off = fuzz_offset() & ~(size_t)7;
        v = fuzz_value();
        len = 8;
        memcpy(bytes, &v, 8);
    }
    if (off + len > SIZE)
        len = SIZE - off;
    put(fd, off, bytes, len);
}

/* Put the pristine region back: the original file at its name, its length and bytes. */
static void restore(int fd, const void *pristine)
{
    struct stat st;
    if (lstat(orig_path, &st) == 0) {
        CHECK(lstat(region_path, &st) == 0);
        CHECK((S_ISDIR(st.st_mode) ? rmdir(region_path) : unlink(region_path)) == 0);
        CHECK(rename(orig_path, region_path) == 0);
    }
    CHECK(ftruncate(fd, SIZE) == 0);
    put(fd, 0, pristine, SIZE);
}

/* The reader over random changes: nothing it does may crash (ASan and UBSan watch), every
 * count stays within its array, and a device's total is at least what its listed
 * processes are charged. */
static void test_fuzz(const struct gpulet_limits *l, unsigned iterations, uint64_t seed)
{
    struct gpulet_handle h;
    char *pristine = malloc(SIZE);
    CHECK(pristine != NULL);
    rng_state = seed;
    CHECK(gpulet_region_create(region_path, l, err, sizeof err) == 0);
    CHECK(gpulet_region_open(region_path, &h, err, sizeof err) == 0);
    CHECK(gpulet_region_attach(&h, getpid(), "fuzz", err, sizeof err) == 0);
    CHECK(gpulet_region_reserve(&h, 0, 300 * MIB, 1024 * MIB, NULL) == 0);
    CHECK(gpulet_region_reserve(&h, 1, 5 * MIB, 64 * MIB, NULL) == 0);
    int fd = open(region_path, O_RDWR);
    CHECK(fd >= 0 && pread(fd, pristine, SIZE, 0) == (ssize_t)SIZE);
    for (unsigned it = 0; it < iterations; it++) {
        unsigned changes = 1 + (unsigned)below(4);
        for (unsigned c = 0; c < changes; c++)
            mutate(fd, l);
        for (int with = 0; with < 2; with++) {
            const struct gpulet_limits *expected = with ? l : NULL;
            int rc = inspect(expected);
            if (!seen->readable) {
                if (rc >= 0 || seen->problems != 1)
                    fprintf(stderr, "seed %llu iteration %u\n", (unsigned long long)seed, it);
                CHECK(rc < 0 && seen->problems == 1);
                continue;
            }
            CHECK(rc == 0);
            CHECK(seen->usage.devices <= GPULET_MAX_DEVICES);
            CHECK(seen->usage.procs <= GPULET_MAX_SLOTS);
            CHECK(expected == NULL || seen->usage.devices == l->count);
            for (uint32_t d = 0; d < seen->usage.devices; d++) {
                uint64_t sum = 0;
                for (uint32_t p = 0; p < seen->usage.procs; p++) {
                    uint64_t u = seen->usage.proc[p].used[d];
                    sum = u > UINT64_MAX - sum ? UINT64_MAX : sum + u;
                }
                CHECK(seen->usage.used[d] >= sum);
                CHECK(seen->usage.dev[d].util_permille <= 1000);
            }
        }
        int rc = gpulet_region_write_feedback(region_path, l, (uint32_t)below(l->count), 500,
                                              gpulet_now_ns(), err, sizeof err);
        CHECK(rc == 0 || rc == -EINVAL || rc == -ELOOP);
        uint32_t util[GPULET_MAX_DEVICES] = {500, GPULET_NO_FEEDBACK};
        int fed = 1;
        rc = inspect_feedback(l, util, &fed);
        CHECK(rc == 0 || seen->problems == 1);
        /* Written only to a region found readable and without a problem. */
        CHECK(fed != 0 || (rc == 0 && seen->readable && seen->problems == 0));
        CHECK(fed == 0 || err[0] != '\0');
        restore(fd, pristine);
    }
    CHECK(inspect(l) == 0 && seen->problems == 0 && seen->usage.used[0] == 300 * MIB);
    close(fd);
    gpulet_region_close(&h);
    free(pristine);
    free(seen);
}

int main(int argc, char **argv)
{
    struct gpulet_limits l;
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: region_test DIR [FUZZ_ITERATIONS [SEED]]\n");
        return 2;
    }
    dir = argv[1];
    snprintf(region_path, sizeof region_path, "%s/region", dir);
    snprintf(orig_path, sizeof orig_path, "%s/region.orig", dir);
    unsigned iterations = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 3000;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : (uint64_t)time(NULL) | 1;
    test_limits(&l);
    test_files(&l);
    test_accounting(&l);
    test_private(&l);
    test_untrusted(&l);
    fprintf(stderr, "region_test: %u fuzz iterations, seed %llu\n", iterations,
            (unsigned long long)seed);
    test_fuzz(&l, iterations, seed);
    puts("ok");
    return 0;
}
