# Every C declaration the core uses, in one place (csrc/ holds the code).
from libc.stdint cimport int64_t

cdef extern from "cyj_sync.h" nogil:
    ctypedef struct cyj_monitor:
        pass
    int cyj_monitor_init(cyj_monitor *m)
    void cyj_monitor_destroy(cyj_monitor *m)
    void cyj_lock(cyj_monitor *m)
    void cyj_unlock(cyj_monitor *m)
    void cyj_signal(cyj_monitor *m)
    void cyj_broadcast(cyj_monitor *m)
    void cyj_wait(cyj_monitor *m)
    int cyj_wait_until(cyj_monitor *m, int64_t deadline_ns)
    int64_t cyj_now_ns()
    int64_t cyj_thread_cpu_ns()
    int *cyj_worker_depth()
    void cyj_thread_switches(int64_t *voluntary, int64_t *involuntary)
    int64_t cyj_load(const int64_t *p)
    void cyj_store(int64_t *p, int64_t v)
    int64_t cyj_add(int64_t *p, int64_t v)
    int cyj_spin_while_equal(const int64_t *p, int64_t seen, int64_t spin_ns,
                             const int64_t *awaited)
    int cyj_spin_while_nonzero(const int64_t *p, int64_t spin_ns, const int64_t *awaited)
    ctypedef struct cyj_whereabouts:
        int64_t caller
        int64_t runner
    int64_t CYJ_CPU_UNKNOWN
    void cyj_publish_cpu(int64_t *where)
    void cyj_mark_waking(int64_t *where)
    int cyj_cas(int64_t *p, int64_t expected, int64_t desired)
    ctypedef struct cyj_ticket:
        int64_t claimed
        void *owner
        int64_t taken_ns
        int64_t voluntary
        int64_t involuntary
        const int64_t *caller_gil_free

cdef extern from "cyj_queue.h" nogil:
    ctypedef struct cyj_queue:
        int64_t count
        int64_t closed
    int cyj_queue_init(cyj_queue *q, int64_t capacity)
    void cyj_queue_destroy(cyj_queue *q)
    int cyj_queue_push(cyj_queue *q, void *item, int wake_now)
    void cyj_queue_wake(cyj_queue *q)
    void *cyj_queue_pop(cyj_queue *q, int64_t spin_ns, const int64_t *pusher)
    void *cyj_queue_try_pop(cyj_queue *q)
    void cyj_queue_close(cyj_queue *q)
