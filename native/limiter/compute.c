/*
 * Compute: pace the container's launches so that its GPU time is its share of wall time.
 *
 * Each throttled device has one pacing clock in the region, shared by every process of the
 * container: the time its next launch may start. A launch takes the clock forward by its
 * GPU time divided by the share and waits until its own start. The GPU time of a launch is
 * measured by a pair of events around it; until the measurement arrives the launch is
 * charged the process's running estimate, and when it arrives the clock is corrected by
 * the difference. So the launches are spread evenly (no token-bucket bursts and stalls)
 * and what is charged is what ran. The agent's measured utilisation, when fresh, corrects
 * a residual factor (overlapping streams, kernels the events cannot separate).
 *
 * A launch into a stream being captured into a graph runs nothing, so it is not paced (the
 * graph's launch is). The event calls run in relaxed capture mode: in global mode, another
 * thread's capture would be invalidated by them.
 *
 * A batch slice's device follows the share the agent writes in the region (what production
 * slices on its GPU leave idle), while that share is fresh; else its limits' core percent, its
 * floor. It is paced even at 100%: each launch waits for the GPU time of those before it, so
 * no more than a launch's worth is ever queued ahead, and a share taken back holds from the
 * next launch on.
 *
 * At 100% (a production slice's) nothing here runs: the hooks call straight through.
 */
#include <errno.h>
#include <time.h>

#include "limiter.h"

#define RING 64
#define POLLS_PER_LAUNCH 8
#define SLACK_NS 1000000ULL     /* credit a late launch may use: absorbs sleep overshoot */
#define MIN_SLEEP_NS 20000ULL   /* shorter waits accumulate on the clock instead */
#define WAIT_LIMIT_NS 1000000000ULL
#define FALLBACK_EST_NS 200000ULL
#define FEEDBACK_FRESH_NS 3000000000ULL
#define SHARE_FRESH_NS 500000000ULL /* an older batch share falls back to the floor */
#define MIN_SHARE_PERMILLE 2

enum { FREE, CLAIMED, PENDING, POLLING };

struct sample {
    int state;
    CUevent start, end;
    uint64_t charged;
    uint32_t share; /* permille, when it was charged: its correction is made at the same */
};

struct pace {
    int events; /* 0 none, 1 being made, 2 ready, -1 cannot */
    uint64_t est_ns;
    uint32_t next;
    uint32_t corr_milli; /* feedback correction, 1000 = none */
    uint64_t corr_stamp, corr_throttled;
    struct sample ring[RING];
};

static struct pace paces[GPULET_MAX_DEVICES];

struct gl_ticket {
    int index;
    int slot;
    int ptsz;
    uint32_t share;
    uint64_t charged;
};

void gl_compute_forget_all(void) {
    for (int i = 0; i < GPULET_MAX_DEVICES; i++)
        paces[i] = (struct pace){0};
}

static void sleep_until(uint64_t when_ns) {
    struct timespec ts = {.tv_sec = (time_t)(when_ns / 1000000000ULL),
                          .tv_nsec = (long)(when_ns % 1000000000ULL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int batch(int index) { return (gl.limits.dev[index].flags & GPULET_LIMIT_BATCH) != 0; }

/* The device's compute share, in permille: its limits' core percent, or for a batch slice the
 * agent's current share while it is fresh (never below 0.2%). */
static uint32_t share_of(int index) {
    uint32_t floor = gl.limits.dev[index].core_percent * 10;
    if (!batch(index))
        return floor;
    const struct gpulet_device_shared *shared = &gl_region()->region->dev[index];
    uint64_t stamp = __atomic_load_n(&shared->share_stamp_ns, __ATOMIC_ACQUIRE);
    if (!stamp || gpulet_now_ns() - stamp > SHARE_FRESH_NS)
        return floor;
    uint32_t share = __atomic_load_n(&shared->share_permille, __ATOMIC_RELAXED);
    return share < MIN_SHARE_PERMILLE ? MIN_SHARE_PERMILLE : share > 1000 ? 1000 : share;
}

/* Clock time a launch of `gpu_ns` costs at `share` permille and the correction. */
static uint64_t scaled(const struct pace *p, uint32_t share, uint64_t gpu_ns) {
    uint32_t corr = p->corr_milli ? p->corr_milli : 1000;
    return gpu_ns * 1000 / share * corr / 1000;
}

static void make_events(struct pace *p) {
    int expected = 0;
    if (!__atomic_compare_exchange_n(&p->events, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return;
    int ok = GL_REAL(cuEventCreate) && GL_REAL(cuEventQuery) && GL_REAL(cuEventElapsedTime) &&
             GL_REAL(cuEventRecord);
    for (int i = 0; ok && i < RING; i++)
        ok = real_cuEventCreate(&p->ring[i].start, 0) == CUDA_SUCCESS &&
             real_cuEventCreate(&p->ring[i].end, 0) == CUDA_SUCCESS;
    if (!ok) {
        gl_log("event=no-timing-events fallback_est_us=%llu",
               (unsigned long long)(FALLBACK_EST_NS / 1000));
        __atomic_store_n(&p->est_ns, FALLBACK_EST_NS, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&p->events, ok ? 2 : -1, __ATOMIC_RELEASE);
}

/* Settle launches whose events have completed; returns how many are still pending. */
static int settle(struct pace *p, struct gpulet_device_shared *shared) {
    int pending = 0, polls = 0;
    for (int i = 0; i < RING; i++) {
        struct sample *s = &p->ring[i];
        int state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        if (state == FREE)
            continue;
        int expected = PENDING;
        if (state != PENDING || polls >= POLLS_PER_LAUNCH ||
            !__atomic_compare_exchange_n(&s->state, &expected, POLLING, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
            pending++;
            continue;
        }
        polls++;
        CUresult q = real_cuEventQuery(s->end);
        if (q == CUDA_ERROR_NOT_READY) {
            __atomic_store_n(&s->state, PENDING, __ATOMIC_RELEASE);
            pending++;
            continue;
        }
        float ms = 0;
        if (q == CUDA_SUCCESS && real_cuEventElapsedTime(&ms, s->start, s->end) == CUDA_SUCCESS &&
            ms >= 0) {
            uint64_t actual = (uint64_t)((double)ms * 1e6);
            uint64_t est = __atomic_load_n(&p->est_ns, __ATOMIC_RELAXED);
            __atomic_store_n(&p->est_ns, est ? (7 * est + actual) / 8 : actual, __ATOMIC_RELAXED);
            /* Correct the clock by what was really used (two's complement: may go back), at
             * the share it was charged at: a batch share changed since must not turn the
             * difference into a large credit. */
            uint64_t delta = scaled(p, s->share, actual) - scaled(p, s->share, s->charged);
            __atomic_fetch_add(&shared->pace_ns, delta, __ATOMIC_ACQ_REL);
            __atomic_fetch_add(&shared->busy_ns, actual, __ATOMIC_RELAXED);
        }
        __atomic_store_n(&s->state, FREE, __ATOMIC_RELEASE);
    }
    return pending;
}

static int claim(struct pace *p) {
    for (int tries = 0; tries < RING; tries++) {
        uint32_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED) % RING;
        int expected = FREE;
        if (__atomic_compare_exchange_n(&p->ring[i].state, &expected, CLAIMED, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return (int)i;
    }
    return -1;
}

/* Fold in the agent's measurement when it is new, fresh, and we were held back since. */
static void feedback(struct pace *p, int index, const struct gpulet_device_shared *shared,
                     uint64_t now) {
    uint64_t stamp = __atomic_load_n(&shared->util_stamp_ns, __ATOMIC_ACQUIRE);
    if (!stamp || stamp == p->corr_stamp || now - stamp > FEEDBACK_FRESH_NS)
        return;
    uint64_t throttled = __atomic_load_n(&shared->throttled_ns, __ATOMIC_RELAXED);
    uint32_t util = __atomic_load_n(&shared->util_permille, __ATOMIC_RELAXED);
    int held_back = throttled != p->corr_throttled;
    p->corr_stamp = stamp;
    p->corr_throttled = throttled;
    if (!held_back || !util)
        return;
    uint64_t target = share_of(index);
    uint64_t ratio = (uint64_t)util * 1000 / target; /* measured / wanted, in thousandths */
    if (ratio < 800)
        ratio = 800;
    if (ratio > 1250)
        ratio = 1250;
    uint64_t corr = (uint64_t)(p->corr_milli ? p->corr_milli : 1000) * ratio / 1000;
    p->corr_milli = (uint32_t)(corr < 500 ? 500 : corr > 4000 ? 4000 : corr);
}

static int capturing(CUstream stream, int ptsz) {
    CUresult (*query)(CUstream, int *) =
        ptsz ? real_cuStreamIsCapturing_ptsz : real_cuStreamIsCapturing;
    int status = 0; /* CU_STREAM_CAPTURE_STATUS_NONE */
    return query && query(stream, &status) == CUDA_SUCCESS && status != 0;
}

/* Relaxed capture mode for this thread; returns the mode to put back. */
static int relax(void) {
    int mode = 2; /* CU_STREAM_CAPTURE_MODE_RELAXED */
    if (!real_cuThreadExchangeStreamCaptureMode ||
        real_cuThreadExchangeStreamCaptureMode(&mode) != CUDA_SUCCESS)
        return -1;
    return mode;
}

static void unrelax(int mode) {
    if (mode >= 0)
        real_cuThreadExchangeStreamCaptureMode(&mode);
}

/* Before a launch on the current device: wait for its turn. 0 when not throttled. */
static int pace_before(CUstream stream, int ptsz, struct gl_ticket *t) {
    int index = gl_current_index(NULL);
    if (index < 0 || (!batch(index) && share_of(index) >= 1000) || capturing(stream, ptsz))
        return 0;
    int mode = relax();
    struct pace *p = &paces[index];
    struct gpulet_device_shared *shared = &gl_region()->region->dev[index];
    if (__atomic_load_n(&p->events, __ATOMIC_ACQUIRE) == 0)
        make_events(p);
    int timed = __atomic_load_n(&p->events, __ATOMIC_ACQUIRE) == 2;
    t->index = index;
    t->slot = -1;
    t->ptsz = ptsz;
    uint64_t now = gpulet_now_ns();
    if (timed) {
        /* Until the first measurement, one launch in flight; after, at most RING. */
        uint64_t deadline = now + WAIT_LIMIT_NS;
        for (;;) {
            int pending = settle(p, shared);
            int first = __atomic_load_n(&p->est_ns, __ATOMIC_RELAXED) == 0;
            if (!(first && pending) && (t->slot = claim(p)) >= 0)
                break;
            if (gpulet_now_ns() > deadline)
                break;
            sleep_until(gpulet_now_ns() + MIN_SLEEP_NS);
        }
        now = gpulet_now_ns();
    }
    feedback(p, index, shared, now);
    t->charged = __atomic_load_n(&p->est_ns, __ATOMIC_RELAXED);
    t->share = share_of(index);
    uint64_t cost = scaled(p, t->share, t->charged);
    uint64_t clock = __atomic_load_n(&shared->pace_ns, __ATOMIC_ACQUIRE), start;
    do {
        start = clock + SLACK_NS < now ? now - SLACK_NS : clock;
    } while (!__atomic_compare_exchange_n(&shared->pace_ns, &clock, start + cost, 0,
                                          __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
    __atomic_fetch_add(&shared->launches, 1, __ATOMIC_RELAXED);
    if (start > now + MIN_SLEEP_NS) {
        sleep_until(start);
        __atomic_fetch_add(&shared->throttled_ns, gpulet_now_ns() - now, __ATOMIC_RELAXED);
    }
    if (t->slot >= 0) {
        CUresult (*record)(CUevent, CUstream) = ptsz ? GL_REAL(cuEventRecord_ptsz) : real_cuEventRecord;
        if (!record || record(p->ring[t->slot].start, stream) != CUDA_SUCCESS) {
            __atomic_store_n(&p->ring[t->slot].state, FREE, __ATOMIC_RELEASE);
            t->slot = -1;
        }
    }
    unrelax(mode);
    return 1;
}

static void pace_after(struct gl_ticket *t, CUstream stream, CUresult launched) {
    if (t->slot < 0)
        return;
    struct sample *s = &paces[t->index].ring[t->slot];
    CUresult (*record)(CUevent, CUstream) = t->ptsz ? real_cuEventRecord_ptsz : real_cuEventRecord;
    int mode = relax();
    CUresult recorded = launched == CUDA_SUCCESS ? record(s->end, stream) : launched;
    unrelax(mode);
    if (recorded == CUDA_SUCCESS) {
        s->charged = t->charged;
        s->share = t->share;
        __atomic_store_n(&s->state, PENDING, __ATOMIC_RELEASE);
    } else {
        __atomic_store_n(&s->state, FREE, __ATOMIC_RELEASE);
    }
}

/* Every launch hook: straight through unless the device is throttled. */
#define GL_PACED(name, ptsz, stream, args)                                                      \
    do {                                                                                        \
        if (!GL_REAL(name))                                                                     \
            return CUDA_ERROR_NOT_INITIALIZED;                                                  \
        if (__builtin_expect(!gl.pacing, 1))                                                    \
            return real_##name args;                                                            \
        struct gl_ticket ticket;                                                                \
        if (!pace_before((stream), (ptsz), &ticket))                                            \
            return real_##name args;                                                            \
        CUresult rc_ = real_##name args;                                                        \
        pace_after(&ticket, (stream), rc_);                                                     \
        return rc_;                                                                             \
    } while (0)

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                        CUstream stream, void **params, void **extra) {
    GL_PACED(cuLaunchKernel, 0, stream, (f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra));
}

CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                             unsigned int bx, unsigned int by, unsigned int bz,
                             unsigned int shmem, CUstream stream, void **params, void **extra) {
    GL_PACED(cuLaunchKernel_ptsz, 1, stream,
             (f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra));
}

CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params,
                          void **extra) {
    GL_PACED(cuLaunchKernelEx, 0, config ? config->hStream : NULL, (config, f, params, extra));
}

CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params,
                               void **extra) {
    GL_PACED(cuLaunchKernelEx_ptsz, 1, config ? config->hStream : NULL,
             (config, f, params, extra));
}

CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy,
                                   unsigned int gz, unsigned int bx, unsigned int by,
                                   unsigned int bz, unsigned int shmem, CUstream stream,
                                   void **params) {
    GL_PACED(cuLaunchCooperativeKernel, 0, stream,
             (f, gx, gy, gz, bx, by, bz, shmem, stream, params));
}

CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy,
                                        unsigned int gz, unsigned int bx, unsigned int by,
                                        unsigned int bz, unsigned int shmem, CUstream stream,
                                        void **params) {
    GL_PACED(cuLaunchCooperativeKernel_ptsz, 1, stream,
             (f, gx, gy, gz, bx, by, bz, shmem, stream, params));
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    GL_PACED(cuGraphLaunch, 0, stream, (exec, stream));
}

CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream stream) {
    GL_PACED(cuGraphLaunch_ptsz, 1, stream, (exec, stream));
}
