/*
 * region_test.c: native/limiter/region.c on its own, built with -Wall -Wextra -Werror and
 * -fsanitize=address,undefined by tests/unit/test_region.py. Usage: region_test DIR (an empty
 * directory it may write in). Prints "ok" and exits 0, or names the failed check and exits 1.
 */
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

int main(int argc, char **argv)
{
    struct gpulet_limits l;
    if (argc != 2) {
        fprintf(stderr, "usage: region_test DIR\n");
        return 2;
    }
    dir = argv[1];
    test_limits(&l);
    test_files(&l);
    test_accounting(&l);
    test_private(&l);
    puts("ok");
    return 0;
}
