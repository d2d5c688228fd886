/* Small portable synchronisation helpers for the cyjob core.
 *
 * Everything here is callable without the GIL.  A monitor is a mutex with its
 * condition variable (bound to CLOCK_MONOTONIC so timed waits ignore wall-clock
 * jumps).  Atomics use the GCC/Clang builtins so Cython can call them as plain
 * functions.
 */
#ifndef CYJ_SYNC_H
#define CYJ_SYNC_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t cond;
} cyj_monitor;

static inline int cyj_monitor_init(cyj_monitor *m)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&m->mutex, NULL) != 0)
        return -1;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (pthread_cond_init(&m->cond, &attr) != 0) {
        pthread_condattr_destroy(&attr);
        return -1;
    }
    pthread_condattr_destroy(&attr);
    return 0;
}

static inline void cyj_monitor_destroy(cyj_monitor *m)
{
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->mutex);
}

static inline void cyj_lock(cyj_monitor *m) { pthread_mutex_lock(&m->mutex); }
static inline void cyj_unlock(cyj_monitor *m) { pthread_mutex_unlock(&m->mutex); }
static inline void cyj_signal(cyj_monitor *m) { pthread_cond_signal(&m->cond); }
static inline void cyj_broadcast(cyj_monitor *m) { pthread_cond_broadcast(&m->cond); }
static inline void cyj_wait(cyj_monitor *m) { pthread_cond_wait(&m->cond, &m->mutex); }

static inline int64_t cyj_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* This thread's depth in pool work: 1 in a pool's worker thread, one more
 * while a caller runs a batch of its own call.  A thread-local C int: read
 * by every Parallel call, changed around every batch a caller runs, where a
 * threading.local costs a dict lookup per access.  (Each module including
 * this header has its own counter: only _pool uses it.) */
static inline int *cyj_worker_depth(void)
{
    static _Thread_local int depth = 0;
    return &depth;
}

/* CPU time consumed by the calling thread (not the process). */
static inline int64_t cyj_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The calling thread's context switches so far: voluntary (it blocked: the
 * GIL, a sleep, I/O) and involuntary (the CPU was taken from it).  Zero where
 * the OS keeps no per-thread counts. */
static inline void cyj_thread_switches(int64_t *voluntary, int64_t *involuntary)
{
#ifdef RUSAGE_THREAD
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) {
        *voluntary = (int64_t)ru.ru_nvcsw;
        *involuntary = (int64_t)ru.ru_nivcsw;
        return;
    }
#endif
    *voluntary = 0;
    *involuntary = 0;
}

/* Wait with the mutex held until signalled or the absolute monotonic deadline
 * passes.  Returns 0 when signalled (or spuriously woken), 1 on time-out. */
static inline int cyj_wait_until(cyj_monitor *m, int64_t deadline_ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000LL);
    ts.tv_nsec = (long)(deadline_ns % 1000000000LL);
    return pthread_cond_timedwait(&m->cond, &m->mutex, &ts) == ETIMEDOUT;
}

static inline int64_t cyj_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void cyj_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline int64_t cyj_add(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }

/* Atomically replace *p by desired if it equals expected; 1 on success. */
static inline int cyj_cas(int64_t *p, int64_t expected, int64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

/* What a pool's queue holds for a batch: a claim flag that whoever runs the
 * batch sets first (compare-and-swap, no GIL needed), and the batch object
 * itself, which only code holding the GIL may touch.  The worker that claims
 * it notes, before it waits for the GIL, when it took it and its context
 * switches so far (the auto backend measures that wait; 0, 0, -1 unless). */
typedef struct {
    int64_t claimed;
    void *owner;
    int64_t taken_ns;
    int64_t voluntary;
    int64_t involuntary;
    /* Non-NULL for a batch whose caller only waits for it: nonzero while that
     * caller has let go of the GIL (see _pool's HANDOFF_SPIN_NS). */
    const int64_t *caller_gil_free;
} cyj_ticket;

static inline void cyj_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Where the threads that wait for one another last ran.  A spin waits for
 * another thread to do something; it is futile, and worse, while that thread
 * waits for this very CPU: the scheduler often wakes a thread on its waker's
 * CPU, and then lets the spinner run out its spin (a caller and its worker
 * on one CPU made calls of 10 tiny tasks ~100 us instead of ~12).  So each
 * side publishes its CPU, and a spinner parks as soon as the thread it waits
 * for is on its own CPU.  Yielding instead was tried: on a loaded machine a
 * yield hands the CPU to another program for a whole time slice (~4 ms per
 * call beside two busy loops). */
typedef struct {
    int64_t caller;   /* the thread that dispatches and collects batches */
    int64_t runner;   /* the worker that last took a batch */
} cyj_whereabouts;

#define CYJ_CPU_UNKNOWN (-1)
/* Woken from a park and not running yet: it may be queued behind the
 * spinner on the spinner's CPU, or just slow to come up elsewhere, so it
 * gets a short grace to publish where it runs. */
#define CYJ_CPU_WAKING (-2)
#define CYJ_WAKING_GRACE_NS 4000

static inline int64_t cyj_this_cpu(void)
{
#ifdef __linux__
    return (int64_t)sched_getcpu();  /* a read of the rseq area: ~1 ns */
#else
    return CYJ_CPU_UNKNOWN;
#endif
}

static inline void cyj_publish_cpu(int64_t *where)
{
    if (where != NULL)
        __atomic_store_n(where, cyj_this_cpu(), __ATOMIC_RELAXED);
}

static inline void cyj_mark_waking(int64_t *where)
{
    if (where != NULL)
        __atomic_store_n(where, CYJ_CPU_WAKING, __ATOMIC_RELAXED);
}

/* Whether the awaited thread, as published in *awaited (NULL: unknown),
 * cannot run until this spinner lets go of its CPU. */
static inline int cyj_awaited_here(const int64_t *awaited, int64_t spun_ns)
{
    int64_t cpu;
    if (awaited == NULL)
        return 0;
    cpu = __atomic_load_n(awaited, __ATOMIC_RELAXED);
    if (cpu == CYJ_CPU_WAKING)
        return spun_ns >= CYJ_WAKING_GRACE_NS;
    return cpu >= 0 && cpu == cyj_this_cpu();
}

/* Spin (without the GIL, without a lock) until (*p == value) == until_equal,
 * spin_ns elapse, or the thread that will change *p turns out to wait for
 * this CPU (see cyj_whereabouts).  Returns 1 once the condition holds.  A
 * wake-up through a condition variable costs ~12-15 us here against ~0.5 us
 * for a spin hand-off, so a bounded spin before parking pays for short gaps
 * between batches (benchmarks/bench_overhead.py). */
static inline int cyj__spin(const int64_t *p, int64_t value, int until_equal, int64_t spin_ns,
                            const int64_t *awaited)
{
    int64_t start, now;
    int i;
    if (spin_ns <= 0 || cyj_awaited_here(awaited, 0))
        return (cyj_load(p) == value) == until_equal;
    start = cyj_now_ns();
    for (;;) {
        for (i = 0; i < 64; i++) {
            if ((cyj_load(p) == value) == until_equal)
                return 1;
            cyj_cpu_relax();
        }
        now = cyj_now_ns();
        if (now - start >= spin_ns || cyj_awaited_here(awaited, now - start))
            return (cyj_load(p) == value) == until_equal;
    }
}

/* Spin until *p != seen (see cyj__spin); 1 if it changed. */
static inline int cyj_spin_while_equal(const int64_t *p, int64_t seen, int64_t spin_ns,
                                       const int64_t *awaited)
{
    return cyj__spin(p, seen, 0, spin_ns, awaited);
}

/* Spin until *p == 0 (see cyj__spin); 1 if it is zero. */
static inline int cyj_spin_while_nonzero(const int64_t *p, int64_t spin_ns,
                                         const int64_t *awaited)
{
    return cyj__spin(p, 0, 1, spin_ns, awaited);
}

#endif /* CYJ_SYNC_H */
