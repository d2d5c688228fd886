/* A blocking FIFO of opaque pointers, shared by a pool's worker threads.
 *
 * The queue never looks inside its items: the cyjob core stores owned
 * references to Batch objects here, taking the reference with the GIL before
 * pushing and releasing it with the GIL after popping.  Push and pop need no
 * GIL.  Workers spin briefly before parking, and a push wakes a worker only if
 * one is parked, so a steady stream of batches costs no wake-ups at all.
 */
#ifndef CYJ_QUEUE_H
#define CYJ_QUEUE_H

#include <stdlib.h>
#include <string.h>
#include "cyj_sync.h"

typedef struct {
    cyj_monitor monitor;
    void **items;
    int64_t capacity;
    int64_t head;          /* index of the oldest item */
    int64_t count;         /* items queued; also read lock-free by spinners */
    int64_t n_sleeping;    /* workers parked on the condition variable */
    int64_t n_spinning;    /* workers spinning on count (atomic, no lock) */
    int64_t closed;
} cyj_queue;

static inline int cyj_queue_init(cyj_queue *q, int64_t capacity)
{
    if (capacity < 16)
        capacity = 16;
    q->items = (void **)malloc(sizeof(void *) * (size_t)capacity);
    if (q->items == NULL)
        return -1;
    q->capacity = capacity;
    q->head = q->count = q->n_sleeping = q->n_spinning = q->closed = 0;
    if (cyj_monitor_init(&q->monitor) != 0) {
        free(q->items);
        q->items = NULL;
        return -1;
    }
    return 0;
}

static inline void cyj_queue_destroy(cyj_queue *q)
{
    cyj_monitor_destroy(&q->monitor);
    free(q->items);
    q->items = NULL;
}

/* Called with the mutex held. */
static inline int cyj_queue__grow(cyj_queue *q)
{
    int64_t i, cap = q->capacity * 2;
    void **items = (void **)malloc(sizeof(void *) * (size_t)cap);
    if (items == NULL)
        return -1;
    for (i = 0; i < q->count; i++)
        items[i] = q->items[(q->head + i) % q->capacity];
    free(q->items);
    q->items = items;
    q->capacity = cap;
    q->head = 0;
    return 0;
}

/* Returns 1 if a parked worker had to be woken, 0 if not, or -1 when out of
 * memory or closed (the item was not queued).  With wake_now 0 the pusher
 * wakes it later (cyj_queue_wake), once it has let go of what that worker
 * will need first: the GIL. */
static inline int cyj_queue_push(cyj_queue *q, void *item, int wake_now)
{
    int wake;
    cyj_lock(&q->monitor);
    if (q->closed || (q->count == q->capacity && cyj_queue__grow(q) != 0)) {
        cyj_unlock(&q->monitor);
        return -1;
    }
    q->items[(q->head + q->count) % q->capacity] = item;
    __atomic_store_n(&q->count, q->count + 1, __ATOMIC_RELEASE);
    /* A spinning worker will take it: waking a parked one as well would cost
     * this thread a system call and put a second worker on a CPU to find
     * nothing (on 2 CPUs, taking it from the one that runs the batch).  A
     * spinner always looks at count under the lock once its spin ends, so
     * the item is never left behind. */
    wake = q->n_sleeping > 0 && cyj_load(&q->n_spinning) == 0;
    cyj_unlock(&q->monitor);
    if (wake && wake_now)
        cyj_signal(&q->monitor);
    return wake;
}

/* Wake one parked worker, for a push that put its wake-up off. */
static inline void cyj_queue_wake(cyj_queue *q)
{
    cyj_lock(&q->monitor);
    cyj_signal(&q->monitor);
    cyj_unlock(&q->monitor);
}

/* Blocks until an item is available; returns NULL once the queue is closed.
 * Spins up to spin_ns on the lock-free count before parking, less if the
 * thread expected to push, as published in *pusher (NULL: unknown), waits
 * for this CPU. */
static inline void *cyj_queue_pop(cyj_queue *q, int64_t spin_ns, const int64_t *pusher)
{
    void *item;
    int wake_next;
    if (cyj_load(&q->count) == 0 && !cyj_load(&q->closed)) {
        cyj_add(&q->n_spinning, 1);
        cyj_spin_while_equal(&q->count, 0, spin_ns, pusher);
        cyj_add(&q->n_spinning, -1);
    }
    cyj_lock(&q->monitor);
    while (q->count == 0 && !q->closed) {
        q->n_sleeping++;
        cyj_wait(&q->monitor);
        q->n_sleeping--;
    }
    if (q->closed) {
        cyj_unlock(&q->monitor);
        return NULL;
    }
    item = q->items[q->head];
    q->head = (q->head + 1) % q->capacity;
    __atomic_store_n(&q->count, q->count - 1, __ATOMIC_RELEASE);
    /* Items pushed while this worker spun woke nobody: pass them on. */
    wake_next = q->count > 0 && q->n_sleeping > 0;
    cyj_unlock(&q->monitor);
    if (wake_next)
        cyj_signal(&q->monitor);
    return item;
}

/* Non-blocking pop for draining: returns NULL when empty. */
static inline void *cyj_queue_try_pop(cyj_queue *q)
{
    void *item = NULL;
    cyj_lock(&q->monitor);
    if (q->count > 0) {
        item = q->items[q->head];
        q->head = (q->head + 1) % q->capacity;
        __atomic_store_n(&q->count, q->count - 1, __ATOMIC_RELEASE);
    }
    cyj_unlock(&q->monitor);
    return item;
}

/* Wakes every worker; pops return NULL from now on.  Items still queued stay
 * there for the owner to drain with cyj_queue_try_pop (to drop references). */
static inline void cyj_queue_close(cyj_queue *q)
{
    cyj_lock(&q->monitor);
    __atomic_store_n(&q->closed, 1, __ATOMIC_RELEASE);
    cyj_unlock(&q->monitor);
    cyj_broadcast(&q->monitor);
}

#endif /* CYJ_QUEUE_H */
