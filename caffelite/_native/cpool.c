/* caffelite._native._cpool: the thread pool the compiled kernels run on (an optional compiled helper).
 *
 * Every kernel of the other native libraries has the form fn(a0, .., a{n-1}, t0, t1) and computes tasks t0..t1,
 * each writing its own part of the output. cp_run spreads such a call over threads: [0, ntasks) is cut into
 * nparts ranges that the calling thread and up to threads - 1 pool threads take in turn as they come free
 * (CP_SHARED instead calls fn(args, 0, ntasks) once per range: for kernels that hand their tasks out
 * themselves through an atomic counter). Which thread runs a range changes no value: the ranges are the same
 * whatever the thread count or timing.
 *
 * Why in C: handing a call to Python pool threads costs tens of microseconds (a future, a wake-up, the GIL),
 * and an integer forward makes some fifty calls. Pool threads here spin for a short while (cp_config) after
 * each call, waiting for the next, then sleep on a condition variable.
 *
 * Calling convention: fn is called through a pointer typed with n + 2 long parameters. The kernels' parameters
 * are all pointers, int or long; on the x86-64 System V and Linux AArch64 ABIs an int parameter is read from the
 * low half of a 64-bit register or stack slot, so passing it as a long gives the same call. cp_available() is 0
 * on other platforms, where the Python pool runs the kernels instead.
 *
 * A call in flight owns one of two job slots until every thread that entered it has left, so a thread that wakes
 * up late can never read the fields of the next call's job. A second caller while a call runs (another Python
 * thread) runs its tasks itself, in the same ranges. A forked child starts with no pool threads.
 */

#include <Python.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if (defined(__x86_64__) || defined(__aarch64__)) && defined(__linux__)
#define CP_OK 1
#else
#define CP_OK 0
#endif

#if defined(__x86_64__)
#define CP_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CP_PAUSE() __asm__ __volatile__("yield")
#else
#define CP_PAUSE() ((void)0)
#endif

#define CP_MAX_ARGS 16
#define CP_MAX_WORKERS 63
#define CP_SHARED 1

struct cp_job {
    void *fn;
    int nargs, mode, max_workers;
    long args[CP_MAX_ARGS];
    long ntasks, nparts;
    long next;   /* the next range to take (atomic) */
    long done;   /* ranges finished (atomic) */
    int rc;      /* the first nonzero return code (atomic) */
    int active;  /* threads inside this job (atomic); the slot is reused only at 0 */
};

static struct cp_job slots[2];
static long gen;              /* the current job is slots[gen & 1] (atomic) */
static int nworkers;          /* pool threads started */
static int sleepers;          /* pool threads waiting on the condition variable (atomic) */
static long spin_ns = 200000; /* how long a pool thread spins for the next call before it sleeps */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER; /* one call at a time uses the pool */
static int atfork_done;

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

typedef long L;
/* fn(args[0..n-1], t0, t1) through a pointer of n + 2 long parameters (see the calling convention above) */
static int call_fn(const struct cp_job *j, long t0, long t1)
{
    const long *a = j->args;
    switch (j->nargs) {
#define CASE(n, ...) case n: return ((int (*)(__VA_ARGS__ L, L))j->fn)
    CASE(0)(t0, t1);
    CASE(1, L,)(a[0], t0, t1);
    CASE(2, L, L,)(a[0], a[1], t0, t1);
    CASE(3, L, L, L,)(a[0], a[1], a[2], t0, t1);
    CASE(4, L, L, L, L,)(a[0], a[1], a[2], a[3], t0, t1);
    CASE(5, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], t0, t1);
    CASE(6, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], t0, t1);
    CASE(7, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], t0, t1);
    CASE(8, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], t0, t1);
    CASE(9, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], t0, t1);
    CASE(10, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], t0, t1);
    CASE(11, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10],
                                               t0, t1);
    CASE(12, L, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
                                                  a[10], a[11], t0, t1);
    CASE(13, L, L, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
                                                     a[10], a[11], a[12], t0, t1);
    CASE(14, L, L, L, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                                                        a[9], a[10], a[11], a[12], a[13], t0, t1);
    CASE(15, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8],
                                                           a[9], a[10], a[11], a[12], a[13], a[14], t0, t1);
    CASE(16, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                              a[8], a[9], a[10], a[11], a[12], a[13], a[14],
                                                              a[15], t0, t1);
#undef CASE
    }
    return -1000;
}

/* Take ranges of job j until none is left. */
static void work(struct cp_job *j)
{
    for (;;) {
        const long k = __atomic_fetch_add(&j->next, 1, __ATOMIC_SEQ_CST);
        if (k >= j->nparts) return;
        const int rc = j->mode == CP_SHARED ? call_fn(j, 0, j->ntasks)
                                            : call_fn(j, j->ntasks * k / j->nparts, j->ntasks * (k + 1) / j->nparts);
        if (rc) {
            int zero = 0;
            __atomic_compare_exchange_n(&j->rc, &zero, rc, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        }
        __atomic_fetch_add(&j->done, 1, __ATOMIC_SEQ_CST);
    }
}

static void *worker_main(void *arg)
{
    const int index = (int)(intptr_t)arg;
    long seen = __atomic_load_n(&gen, __ATOMIC_SEQ_CST);
    for (;;) {
        long g = __atomic_load_n(&gen, __ATOMIC_SEQ_CST);
        if (g == seen) {
            const long until = now_ns() + __atomic_load_n(&spin_ns, __ATOMIC_RELAXED);
            for (int i = 0; (g = __atomic_load_n(&gen, __ATOMIC_SEQ_CST)) == seen; i++) {
                if ((i & 255) == 255 && now_ns() > until) {
                    pthread_mutex_lock(&wake_lock);
                    __atomic_fetch_add(&sleepers, 1, __ATOMIC_SEQ_CST);
                    while ((g = __atomic_load_n(&gen, __ATOMIC_SEQ_CST)) == seen) pthread_cond_wait(&wake, &wake_lock);
                    __atomic_fetch_sub(&sleepers, 1, __ATOMIC_SEQ_CST);
                    pthread_mutex_unlock(&wake_lock);
                    break;
                }
                CP_PAUSE();
            }
        }
        seen = g;
        struct cp_job *j = &slots[g & 1];
        __atomic_fetch_add(&j->active, 1, __ATOMIC_SEQ_CST);
        /* entered in time: the slot still holds job g (else the caller has moved on; it never rewrites a slot
         * that a thread is inside) */
        if (__atomic_load_n(&gen, __ATOMIC_SEQ_CST) == g && index < j->max_workers) work(j);
        __atomic_fetch_sub(&j->active, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static void reset_in_child(void)
{
    /* the child has only the forking thread: no pool threads, fresh locks */
    nworkers = 0;
    sleepers = 0;
    memset(slots, 0, sizeof slots);
    pthread_mutex_init(&wake_lock, NULL);
    pthread_cond_init(&wake, NULL);
    pthread_mutex_init(&run_lock, NULL);
}

/* Start pool threads up to want (at most CP_MAX_WORKERS); returns how many run. */
static int start_workers(int want)
{
    if (want > CP_MAX_WORKERS) want = CP_MAX_WORKERS;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, reset_in_child);
        atfork_done = 1;
    }
    if (nworkers >= want) return nworkers;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with the Python thread */
    while (nworkers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int err = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)nworkers);
        pthread_attr_destroy(&attr);
        if (err) break;
        nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return nworkers;
}

/* Whether cp_run can call kernels on this platform. */
int cp_available(void) { return CP_OK; }

/* How long pool threads spin for the next call before they sleep (microseconds). */
void cp_config(long spin_us) { __atomic_store_n(&spin_ns, spin_us * 1000, __ATOMIC_RELAXED); }

/* Pool threads started so far. */
int cp_workers(void) { return nworkers; }

/* Run fn over [0, ntasks) in nparts ranges on the calling thread and up to threads - 1 pool threads (mode 0), or
 * fn(args, 0, ntasks) nparts times (CP_SHARED). Returns the first nonzero code a call returned, else 0; -1001
 * for bad arguments. */
int cp_run(void *fn, int nargs, const long *args, long ntasks, long nparts, int threads, int mode)
{
    if (!CP_OK || !fn || nargs < 0 || nargs > CP_MAX_ARGS || nparts < 1 || threads < 1) return -1001;
    struct cp_job local;
    struct cp_job *j = &local;
    const int pooled = threads > 1 && nparts > 1 && pthread_mutex_trylock(&run_lock) == 0;
    long g = 0;
    if (pooled) {
        g = __atomic_load_n(&gen, __ATOMIC_SEQ_CST) + 1;
        j = &slots[g & 1];
        while (__atomic_load_n(&j->active, __ATOMIC_SEQ_CST)) CP_PAUSE(); /* a late thread still inside */
    }
    j->fn = fn;
    j->nargs = nargs;
    j->mode = mode;
    memcpy(j->args, args, sizeof(long) * (size_t)nargs);
    j->ntasks = ntasks;
    j->nparts = nparts;
    j->next = 0;
    j->done = 0;
    j->rc = 0;
    if (!pooled) { /* one thread, or the pool is busy with another caller's call */
        work(j);
        return j->rc;
    }
    j->max_workers = start_workers(threads - 1);
    __atomic_store_n(&gen, g, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&wake_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&wake_lock);
    }
    work(j);
    while (__atomic_load_n(&j->done, __ATOMIC_SEQ_CST) < nparts) CP_PAUSE(); /* ranges other threads took */
    const int rc = j->rc;
    pthread_mutex_unlock(&run_lock);
    return rc;
}

/* For the tests: out[t] = t * mult + add for t in t0..t1, and the code `fail` when the range holds task
 * fail_at; with fourteen arguments besides t0, t1 (the last ones passed on the stack), ints among them. */
int cp_selftest(long *out, long mult, int add, int fail_at, int fail, long a5, long a6, long a7, int a8, long a9,
                long a10, long a11, long a12, long check, long t0, long t1)
{
    const long sum = a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12;
    for (long t = t0; t < t1; t++) out[t] = t * mult + add + (sum == check ? 0 : 1000000);
    return fail_at >= t0 && fail_at < t1 ? fail : 0;
}

/* The module itself is empty: it exists so that setuptools builds and installs the shared library. */
static struct PyModuleDef cpool_module = {PyModuleDef_HEAD_INIT, "_cpool", "compiled thread pool (ctypes).", -1,
                                          NULL};

PyMODINIT_FUNC PyInit__cpool(void) { return PyModule_Create(&cpool_module); }
