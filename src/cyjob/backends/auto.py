"""The default backend: measure the first batches, then pick where the rest run.

With no backend given, a call starts on the thread pool and watches its first
batches.  The core records, for each batch run in this process, its start and
end, the CPU time of the thread that ran it, and that thread's own voluntary
and involuntary context switches (a pool worker's wait for the GIL before
the batch included).  ``_probe.decide``, a pure function of those figures,
says where the call goes, from batches that really ran at the same time:

* tasks too small to gain from workers                -> the caller's thread;
* threads that computed at once, or rarely blocked     -> threads (GIL released;
  what kept them from whole CPUs was other programs);
* tasks that mostly wait (sleep, I/O)                  -> threads;
* threads that blocked often while using about one CPU -> processes (GIL-bound),
  or the caller's thread if a task is too small for pickling to pay;
* unclear: keep measuring, then stay on threads (not remembered).

A choice is then checked while the call runs and corrected once: processes
or the caller's thread that run slower per task than the probe's threads
did send the rest to threads; threads that turn out GIL-bound move to
processes.  A call sent to a process pool that is still booting runs on
threads until a worker is up (a cold pool starts beside the call: its fork
server at once, the rest in a thread of its own).  Choices are remembered
per function for a minute (re-measured if a task's cost moves 10x).  An
explicit backend, ``prefer``, ``require="sharedmem"`` or a marker on the
function (``cyjob.nogil(f)``, ``cyjob.gil_bound(f)``) wins over measurement.
"""

import functools
import os
import pickle
import sys
import threading
import time
import types
import weakref

from cyjob._batching import PROCESS_MIN_BATCH_SECONDS, BatchSizer
from cyjob._dispatch import Executor, Router, ThreadExecutor
from cyjob._progress import verbose_stream
from cyjob.backends import get_backend
from cyjob.backends._probe import (INLINE, PROCESSES, THREADS, TINY_TASK_NS, BatchFigures,
                                   decide)
from cyjob.backends.base import Backend
from cyjob.backends.sequential import SequentialBackend
from cyjob.backends.threads import ThreadingBackend, get_pool, grow_pool, pool_complete
from cyjob.exceptions import TempFolderError

# What the probe's figures mean is decided in _probe.decide (a pure function,
# tested on recorded figures).
# Past this much probing (from the first batch's start) without clear
# evidence, the call stays on threads.
PROBE_MAX_NS = 150_000_000
# A choice is checked against threads while the call runs: another place
# that turns out this much slower per task than the probe's threads moves
# the call back to threads (and is remembered so)...
CORRECTION_MARGIN = 1.5
# Process batches that warm the workers up (imports, caches: scikit-learn
# takes ~1 s to import in each) are left out of that check: per worker.
WARMUP_BATCHES = 2
# ...once it has run this many batches, over at least this long.
CHECK_MIN_BATCHES = 4
CHECK_MIN_NS = 50_000_000
# Batches run inline without a look at the check in between, at most.
CHECK_MAX_UNWATCHED = 64
# A call run inline too short for that check forgets its choice if its tasks
# ran this much slower than on threads: the next call measures again.
LAST_LOOK_MARGIN = 1.5
# Tiny tasks run inline in batches of this many.  Most batches read their
# tasks as they run them (Call._reads_as_it_runs); one read whole first (the
# tasks the probe left read ahead) keeps them under the cyclic GC's first
# threshold (700 new objects by default), so that a long call of tiny tasks
# triggers no collection, as a list comprehension triggers none (100k tiny
# tasks in batches of 10,000: 232 young and 21 middle-aged collections, 3-7
# ms of a 30 ms call).  A batch's fixed cost stays ~1% of it: batches of
# 2048 or 8192 ran no faster.
INLINE_TINY_BATCH = 512
# Probe batches last at least this many GIL switch intervals
# (sys.getswitchinterval(), 5 ms by default).  A thread waiting for the GIL
# asks its holder to hand it over only after a whole interval with no switch;
# a pool worker that releases the GIL between batches and takes it back at
# once counts as a switch, so with shorter GIL-bound batches one worker runs
# batch after batch while the other waits for the GIL unseen: the batches
# barely overlap (tests/test_probe.py, GIL_SHORT_BATCHES).  Batches longer
# than the interval make the two workers take turns inside their batches,
# which is the evidence the probe reads.  Measured on 2 ms GIL-bound tasks,
# from the first batch to the verdict, fresh interpreters on the shared
# machine: 16-164 ms, median ~100, with batches of one task; 15-130 ms,
# median 41-46, with these (3 intervals: no better).
PROBE_SWITCH_INTERVALS = 2.0
# The process's first call starts one worker thread for its first task and
# waits this long for it to finish: a tiny task (the call then runs inline,
# no other thread started) takes ~10-50 us there on a quiet machine, where
# each thread start costs ~0.25 ms, and several ms on a loaded one (the new
# thread must be scheduled, then the caller).  Longer tasks only delay the
# start of the other threads by this much.
FIRST_TASK_WAIT_S = 0.002
# Threads check the probe's verdict on this many of their latest batches.
CHECK_WINDOW = 16
# A remembered choice is re-measured when a task's cost moves this much...
MEMO_DRIFT = 10.0
# ...over this many tasks (one task right after other work runs on cold
# caches, 10x slower than the next: benchmarks/bench_auto.py).
MEMO_CHECK_TASKS = 8
# ...and in any case after this many seconds: a choice made while other
# programs held the CPUs must not stick for the life of the process.
MEMO_MAX_AGE = 60.0
# A correction is not checked again while it is remembered (no flapping
# between two places call after call), so it is kept for less: it was made
# on evidence a change of load can reverse (processes slower than threads
# while other programs held the CPUs), and must not hold for a minute once
# that load is gone.  Measuring afresh every this many seconds costs a
# correct correction one probe and a few batches in the wrong place.
CORRECTION_MAX_AGE = 10.0

_MARKER = "__cyjob_backend__"


def nogil(function):
    """Mark ``function`` as releasing the GIL: the default backend runs it
    on threads without measuring."""
    return _mark(function, THREADS)


def gil_bound(function):
    """Mark ``function`` as holding the GIL: the default backend runs it in
    worker processes without measuring."""
    return _mark(function, PROCESSES)


class _Marked:
    """Carries a marker for callables that take no attributes (builtins)."""

    def __init__(self, function, kind):
        self.function = function
        setattr(self, _MARKER, kind)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        return (_Marked, (self.function, getattr(self, _MARKER)))


def _marker_of(function):
    # Through __dict__: a failed getattr costs an exception (~1 us a call).
    attrs = getattr(function, "__dict__", None)
    if attrs is not None:
        return attrs.get(_MARKER)
    return getattr(function, _MARKER, None)


def _mark(function, kind):
    if not callable(function):
        raise TypeError(f"expected a callable, got {type(function).__name__}")
    try:
        setattr(function, _MARKER, kind)
        return function
    except (AttributeError, TypeError):
        return _Marked(function, kind)


def _memo_key(function):
    # A bound method or a partial is made afresh at each call site
    # (delayed(self.fit)): remember what it calls, which lives on.
    while True:
        kind = type(function)
        if kind is types.MethodType:
            function = function.__func__
        elif kind is functools.partial:
            function = function.func
        else:
            return function


class _Memo:
    """Choices per function, ``(kind, ns_per_task, threads_ns_per_task,
    settled)`` (the third: wall time per task the probe got on threads; the
    last: a correction, or a choice a call has proven, which later calls do
    not watch again), each kept for MEMO_MAX_AGE seconds (a correction, put
    with ``settled`` true, for CORRECTION_MAX_AGE): weakly keyed where
    possible, so a closure's memory is not kept alive by cyjob."""

    def __init__(self, max_strong=1024):
        self.weak = weakref.WeakKeyDictionary()
        self.strong = {}
        self.max_strong = max_strong
        self.lock = threading.Lock()

    def get(self, function):
        function = _memo_key(function)
        try:
            entry = self.weak.get(function) or self.strong.get(function)
        except TypeError:  # unhashable callable
            return None
        if entry is None or entry[-1] < time.monotonic():
            return None
        return entry[:-1]

    def put(self, function, choice):
        function = _memo_key(function)
        corrected = len(choice) > 3 and choice[3]
        choice = (*choice, time.monotonic() + (CORRECTION_MAX_AGE if corrected else MEMO_MAX_AGE))
        with self.lock:
            try:
                self.weak[function] = choice
            except TypeError:
                try:
                    if len(self.strong) >= self.max_strong:
                        self.strong.clear()
                    self.strong[function] = choice
                except TypeError:
                    pass

    def settle(self, function):
        """Mark a remembered choice proven, keeping its expiry: later calls
        skip watching it (the per-call cost of many small calls)."""
        function = _memo_key(function)
        with self.lock:
            for table in (self.weak, self.strong):
                try:
                    entry = table.get(function)
                    if entry is not None:
                        table[function] = (*entry[:3], True, entry[-1])
                except TypeError:
                    pass

    def forget(self, function):
        function = _memo_key(function)
        with self.lock:
            for table in (self.weak, self.strong):
                try:
                    table.pop(function, None)
                except TypeError:
                    pass

    def clear(self):
        with self.lock:
            self.weak.clear()
            self.strong.clear()


memo = _Memo()
_THREADS = ThreadingBackend()
_INLINE = SequentialBackend().executor(1)
_NO_HOOKS = (False, False)


class AutoExecutor(Router):
    """The policy of one call: what to measure, what to choose, whether a
    remembered choice still holds, and when a choice proved wrong.  The
    core's ``Router`` only sends each batch where this policy says, and
    checks a remembered choice's task cost as this policy asks
    (``check_cost``); it calls these hooks before the first batch
    (``begin``), before routing each batch while probing, checking a choice
    or waiting for a pool to boot (``watch``), when a remembered choice's
    tasks cost far more or less than remembered (``drifted``), and at the end
    of a call that measured, checked, moved or booted (``ended``).  A call
    whose remembered choice is settled runs no policy code after ``begin``
    (the per-call cost of many small calls)."""

    __slots__ = ("plan", "initial_sizer", "probe_sizer", "n_judged", "choice", "function",
                 "seen", "remembered", "threads_ns", "checked", "corrected", "left",
                 "booting", "hooks", "inline_batches", "inline_ns", "inline_tasks",
                 "growing", "inline_sizer")

    # -- hooks called by the core -------------------------------------------

    def begin(self, function):
        self.initial_sizer = self.call.sizer
        self.probe_sizer = None
        self.n_judged = 0  # probe batches done when decide last ran
        self.function = function
        self.remembered = None
        self.threads_ns = 0.0   # wall ns per task the call got on threads
        self.checked = None     # batches routed since the choice, while checked
        self.corrected = False
        self.left = []          # executors the call was moved away from
        self.booting = None     # the chosen process executor, while its pool starts
        self.choice = self.seen = None
        self.hooks = _NO_HOOKS  # (watch, ended) as last asked of the core
        kind = _marker_of(function)
        if kind is not None:
            self._choose(kind, 0.0, "marked with cyjob." +
                         ("nogil" if kind == THREADS else "gil_bound"))
            return
        self.remembered = remembered = memo.get(function)
        if remembered is None:
            self._probe()
        else:
            self.threads_ns = remembered[2]
            # A choice that was itself a correction is not checked again
            # (until it expires): no flapping between two places.
            self.corrected = len(remembered) > 3 and remembered[3]
            self._choose(remembered[0], remembered[1], "remembered from an earlier call")

    def watch(self, batch):
        booting = self.booting
        if booting is not None and booting.ready():
            self._stop_booting()
            self.route_to(booting, True)
            self._watch()
        elif booting is not None and booting.unavailable():
            self._stop_booting()
            self._say(f"no process backend ({booting.unavailable()}): staying on threads")
            self._watch()
        if self.checked is not None:
            self.checked.append(batch)
            self._check()
            return
        if self.choice is not None:
            return  # only waiting for the pool to boot
        if self.growing:
            self._first_task()
        if self.choice is None:
            self._maybe_decide()
        if self.checked is not None:
            self.checked.append(batch)  # the first batch sent to the choice
        elif self.choice is None:
            self.seen.append(batch)

    def drifted(self, per_task):
        self._say(f"task cost moved from {self.remembered[1] / 1e3:.1f} to "
                  f"{per_task / 1e3:.1f} us: measuring again")
        memo.forget(self.function)  # a call that ends before choosing must not reuse it
        self.corrected = False  # what the probe finds now is no correction
        self.skip_watch(0)  # the probe watches every batch
        if self.target is not None and self.target is not self.first:
            self.left.append(self.target)
        booting = self._stop_booting()
        if booting is not None:
            self.left.append(booting)
        self.route_to(None)
        self.choice = None
        self.checked = None
        self.call.use_sizer(self.initial_sizer)
        self._probe()

    def ended(self, call):
        booting = self._stop_booting()
        if booting is not None:
            self.left.append(booting)
        for executor in self.left:
            executor.call_finished(call)
        self.left = []
        if self.checked is not None and not call.was_aborted:
            self._last_look()
        elif self.choice is None and self.seen and not call.was_aborted:
            self._judge_at_end()
        # Batches hold the call, which holds this.
        self.seen = self.checked = None

    def _judge_at_end(self):
        """A call that ended before its probe decided: the probe judges
        before routing each batch, so the batches that finished after the
        last one was routed were never judged.  Judge them all now, for the
        next call: a verdict is remembered, not acted on.  (20 tasks of 2 ms
        of GIL-bound Python ended undecided in 16 of 40 calls here, and each
        such call left the next to probe on threads again.)"""
        verdict = self._judge(at_end=True)
        if verdict is None or verdict.kind is None or not verdict.remember:
            return
        memo.put(self.function, (verdict.kind, verdict.ns_per_task, self.threads_ns, False))
        self._say(f"the next calls start on {verdict.kind}: {verdict.reason}")

    def _stop_booting(self):
        """The call no longer waits for its process pool to boot (the pool
        is up, or failed, or the call goes elsewhere): the boot's quick GIL
        switches end now.  Return the executor it waited for (or None)."""
        booting, self.booting = self.booting, None
        if booting is not None:
            booting.boot_over()
        return booting

    def _watch(self):
        """Ask the core for the hooks this policy needs now: ``watch`` while
        it probes, checks a choice or waits for a pool to boot, and ``ended``
        once it has done any of these or moved the call (from then on)."""
        before = self.choice is None or self.checked is not None or self.booting is not None
        end = before or self.hooks[1] or bool(self.left)
        if (before, end) != self.hooks:
            self.hooks = (before, end)
            self.watch_batches(before, end)

    def _last_look(self):
        """A call run in the caller's thread too short for its choice to be
        checked while it ran: if its tasks took clearly longer there than on
        the probe's threads, the next call measures again instead of reusing
        the choice.  (Not for processes: their end-to-end times over a few
        batches are too noisy on a loaded machine to act on.)"""
        if self.choice is None or self.choice[0] != INLINE or not self.threads_ns:
            return
        _, elapsed, n_tasks = self._inline_done()
        if not n_tasks:
            return
        if elapsed / n_tasks > LAST_LOOK_MARGIN * self.threads_ns:
            memo.forget(self.function)
            self._say(f"inline ran {elapsed / n_tasks / 1e3:.1f} us per task against "
                      f"{self.threads_ns / 1e3:.1f} on threads: the next call measures again")
        else:
            memo.settle(self.function)  # proven: the next calls are not watched

    # -- measuring --------------------------------------------------------

    def _first_task(self):
        """The process's first call (its pool's threads not started yet):
        one thread runs the first batch (one task; the caller never runs a
        task nobody has measured, see Call._caller_may_run); if that task
        is tiny, the call goes inline and no other thread starts; otherwise
        the others start and the probe goes on as in any call."""
        if not self.seen:
            grow_pool(self.first, 1)  # before the first batch is queued
            return
        self.growing = False
        first = self.seen[0]
        if self.call.wait_for(first, FIRST_TASK_WAIT_S) and first.results is not None:
            verdict = decide([_figures(first)], 1)
            if verdict.kind == INLINE:
                self.n_judged = 1
                self._measured_on_threads([first])
                self._choose(INLINE, verdict.ns_per_task, verdict.reason, remember=True)
                return
        grow_pool(self.first)
        probe_sizer = self.probe_sizer
        if probe_sizer is not None and self.call.sizer is probe_sizer:
            # The next batches last the probe's length at once (sized from
            # the first task, when it is done), not grown 1, 2, 4... tasks
            # from it: GIL-bound batches shorter than the switch interval
            # run one after another and tell nothing (PROBE_SWITCH_INTERVALS).
            self.probe_sizer = probe_sizer.continued(probe_sizer.min_batch_ns / 1e9)
            self.call.use_sizer(self.probe_sizer)

    def _measured_on_threads(self, done):
        # End to end, gaps between batches included, as the check of the
        # choice will measure it.
        span = max(b.finished_ns for b in done) - min(b.started_ns - b.waited_ns for b in done)
        n_tasks = sum(b.size for b in done)
        self.threads_ns = span / n_tasks if n_tasks else 0.0

    def _maybe_decide(self):
        verdict = self._judge()
        if verdict is None or verdict.kind is None:
            return
        self._choose(verdict.kind, verdict.ns_per_task, verdict.reason,
                     remember=verdict.remember)

    def _judge(self, at_end=False):
        """``decide()`` on the probe's finished batches, with the wall time
        per task they got on threads measured once it decides; None when no
        batch finished since the last judgment.  The last chance to decide
        comes PROBE_MAX_NS after the first batch started, never at the end
        of a call (nothing is left to route then)."""
        done = [b for b in self.seen if b.done and b.results is not None]
        if not done:
            return None
        last_chance = (not at_end and
                       time.monotonic_ns() - min(b.started_ns for b in done) >= PROBE_MAX_NS)
        if len(done) == self.n_judged and not last_chance:
            # Nothing new to judge: decide() takes the GIL from the tasks
            # being measured (~1 ms at 40 batches), once per batch routed.
            return None
        self.n_judged = len(done)
        verdict = decide([_figures(b) for b in done], self.n_workers, last_chance)
        if verdict.kind is not None:
            self._measured_on_threads(done)
        return verdict

    def _check(self):
        """Compare the chosen place with what threads gave (or, on threads,
        look again at the evidence); move the call at most once."""
        kind = self.choice[0]
        if kind == INLINE:
            n_done, elapsed, n_tasks = self._inline_done()
            if n_done < CHECK_MIN_BATCHES or elapsed < CHECK_MIN_NS:
                self._skip_until_checkable(n_done, elapsed)
                return
        else:
            done = [b for b in self.checked if b.done and b.results is not None]
            if len(done) < CHECK_MIN_BATCHES:
                return
        if kind == THREADS:
            window = done[-CHECK_WINDOW:]
            verdict = decide([_figures(b) for b in window], self.n_workers)
            if verdict.kind is None or verdict.kind == THREADS or not verdict.remember:
                if len(done) >= 4 * CHECK_WINDOW:
                    self._stop_checking()
                return
            self._correct(verdict.kind, verdict.ns_per_task,
                          "threads measured again: " + verdict.reason)
            return
        if not self.threads_ns:
            self._stop_checking()
            return
        if kind == PROCESSES:
            # Batches run out of this process have no start time here.
            steady = steady_remote_throughput(
                [(b.finished_ns, b.size) for b in done if b.started_ns == 0], self.n_workers)
            if steady is None:
                return
            elapsed, n_tasks = steady
        if elapsed < CHECK_MIN_NS or not n_tasks:
            return
        per_task = elapsed / n_tasks
        if per_task > CORRECTION_MARGIN * self.threads_ns:
            self._correct(THREADS, self.threads_ns,
                          f"{kind} ran {per_task / 1e3:.1f} us per task against "
                          f"{self.threads_ns / 1e3:.1f} on threads")
        else:
            self._stop_checking()

    def _inline_done(self):
        """The batches run inline since the choice: how many, their time and
        their tasks, as the call's sizers observed them (the caller runs
        them one after another, each observed as it ends).  No list of
        batches: a long call of tiny tasks runs hundreds, most unwatched."""
        self.checked.clear()
        sizer = self.call.sizer
        if sizer is not self.inline_sizer:
            # The core moved to the sizer a remembered choice asked for
            # (check_cost, made fresh in _choose): bank what the previous
            # one observed.
            old = self.inline_sizer
            self.inline_batches += old.n_observed
            self.inline_ns += old.work_ns
            self.inline_tasks += old.n_tasks
            self.inline_sizer = sizer
        return (self.inline_batches + sizer.n_observed, self.inline_ns + sizer.work_ns,
                self.inline_tasks + sizer.n_tasks)

    def _skip_until_checkable(self, n_done, elapsed):
        """Route the batches that cannot make the inline check conclusive
        unwatched: a call of tiny tasks runs ~200 batches of 512 in 20 ms,
        and a Python call per batch cost ~2% of it."""
        if n_done <= 0 or elapsed <= 0:
            return
        per_batch = elapsed / n_done
        needed = max(CHECK_MIN_BATCHES - n_done, (CHECK_MIN_NS - elapsed) / per_batch)
        # (Bounded: the batches to come may be longer than the ones seen.)
        self.skip_watch(min(int(needed) - 1, CHECK_MAX_UNWATCHED))

    def _stop_checking(self):
        self.checked = None
        self.call.measure_cpu = False
        self._watch()

    def _correct(self, kind, ns_per_task, reason):
        self.corrected = True
        previous = self.target
        if self.booting is not None:
            previous = self._stop_booting()
        self._choose(kind, ns_per_task, "correcting: " + reason, remember=True)
        if previous is not None and previous is not self.first \
                and previous is not self.target:
            self.left.append(previous)  # still runs batches: told when the call ends

    # -- choosing ---------------------------------------------------------

    def _probe(self):
        # Measure the first batches on threads until _maybe_decide chooses,
        # in batches long enough for GIL-bound ones to overlap (see
        # PROBE_SWITCH_INTERVALS; a first batch of one task still learns
        # the cost of a task).
        call = self.call
        self.seen = []
        self.n_judged = 0
        if not self.first.caller_helps:
            # (Where the caller helps, it runs probe batches itself and
            # routes none meanwhile: long ones there delayed the verdict, to
            # the end of a call of 60 GIL-bound tasks in 1 of 4 runs, where
            # short ones decided within ~10 tasks in 7 of 7.  A process's
            # first call has no caller help (its pool is n_jobs threads, see
            # AutoBackend.executor), nor has a generator's or a time-out's.)
            self.probe_sizer = call.sizer.continued(
                max(PROBE_SWITCH_INTERVALS * sys.getswitchinterval(),
                    call.sizer.min_batch_ns / 1e9))
            call.use_sizer(self.probe_sizer)
        call.measure_cpu = True
        self._watch()

    def _choose(self, kind, ns_per_task, reason, remember=False):
        call = self.call
        plan = self.plan
        call.measure_cpu = False
        self.checked = None
        if self.probe_sizer is not None:
            if call.sizer is self.probe_sizer:
                # The probe's long batches were for measuring only.
                call.use_sizer(self.probe_sizer.continued(
                    self.initial_sizer.min_batch_ns / 1e9))
            self.probe_sizer = None
        if self.growing and kind != INLINE:
            self.growing = False
            grow_pool(self.first)  # threads run batches from now on
        verifying = reason == "remembered from an earlier call"
        marked = not verifying and reason.startswith("marked")
        then = None  # sizer once a remembered choice is verified
        elsewhere = reads = False
        if kind == PROCESSES:
            if marked or _process_pool_running():
                target = _process_executor(self.n_workers, plan)
                if target is not None:
                    target = _PicklableOrThreads(self, target)
            else:
                # A cold start: the fork server starts now (it boots in its
                # own process, ~0.1-0.3 s); the imports of the process
                # backend and cloudpickle, and the pool's I/O thread (35-115
                # ms of this thread's time here), happen in a thread of their
                # own meanwhile, while this call's batches go on on threads.
                from cyjob.backends.processes import forkserver

                forkserver.start_early()
                target = _PicklableOrThreads(self, None, _ProcessBoot(self.n_workers, plan))
            if target is None:
                kind, reason = THREADS, reason + " (no process backend: staying on threads)"
                target = self.first
            else:
                elsewhere = True
                # Batches long enough to amortise a process round trip, sized
                # from what the threads (or an earlier call) measured.
                sizer = call.sizer.continued(target.min_batch_seconds)
                sizer.expect(ns_per_task)
                call.use_sizer(sizer)
        elif kind == INLINE:
            target = _INLINE
            largest = plan.one_thread_batch_size if plan is not None else 0
            # Batch sizes of our own (no batch_size given): each batch reads
            # its tasks as it runs them, as a list comprehension would.
            reads = largest > 0
            if largest:
                if ns_per_task >= TINY_TASK_NS:
                    # Not tiny: batches that grow as measured, so that the
                    # choice can be checked (and corrected) as the call runs.
                    then = BatchSizer(1, 0, largest)
                else:
                    size = INLINE_TINY_BATCH if largest > INLINE_TINY_BATCH else largest
                    then = BatchSizer(1, size, size)
                call.use_sizer(BatchSizer(1, MEMO_CHECK_TASKS, largest) if verifying else then)
        else:
            target = self.first
            call.sizer.expect(ns_per_task)
        self.route_to(target, elsewhere, reads)
        self.choice = (kind, ns_per_task, reason)
        if remember:
            memo.put(self.function, (kind, ns_per_task, self.threads_ns, self.corrected))
        elif verifying:
            # Inline is already the cheapest place for tasks that got cheaper:
            # only heavier ones make it worth measuring again.
            lowest = 0.0 if kind == INLINE else 1 / MEMO_DRIFT
            self.check_cost(MEMO_CHECK_TASKS, ns_per_task, lowest, MEMO_DRIFT, then)
        if not self.corrected and not marked:
            # A choice is watched until it proves itself (or is corrected).
            self.checked = []
            # What the sizer observed before this choice is not inline.
            sizer = self.inline_sizer = call.sizer
            self.inline_batches, self.inline_tasks = -sizer.n_observed, -sizer.n_tasks
            self.inline_ns = -sizer.work_ns
            call.measure_cpu = kind == THREADS
        if elsewhere and not marked and not target.ready():
            # A cold pool takes 0.1-0.3 s to boot: the threads keep running
            # batches meanwhile (GIL-bound, about as fast as one process).
            # (A marker asked for processes: its batches wait for them.)
            self.booting = target
            self.route_to(self.first)
        if self.checked is not None or self.booting is not None or self.left \
                or self.hooks is not _NO_HOOKS:
            self._watch()  # (a settled choice made in begin needs no hook)
        if plan is not None and plan.verbose >= 10:  # (not even formatted otherwise: every call)
            self._say(f"Using {kind}: {reason}")

    def _say(self, message):
        plan = self.plan
        if plan is not None and plan.verbose >= 10:
            verbose_stream(plan.verbose).write(f"[{plan.label}]: {message}\n")


def steady_remote_throughput(finished, n_workers):
    """``(elapsed_ns, n_tasks)`` of batches run in worker processes, from
    each one's ``(finished_ns, n_tasks)``, in the order they ended and
    leaving out the first ``WARMUP_BATCHES`` per worker (a cold pool's
    start-up is paid once, not per task); None until ``CHECK_MIN_BATCHES``
    batches ended after those.  The check of a choice of processes, in
    ``cyjob.Parallel``'s default backend and in the joblib bridge."""
    done = sorted(finished, key=lambda f: f[0])[WARMUP_BATCHES * n_workers - 1:]
    if len(done) < CHECK_MIN_BATCHES + 1:
        return None
    return done[-1][0] - done[0][0], sum(n for _, n in done[1:])


def _figures(batch):
    return BatchFigures(batch.started_ns, batch.finished_ns, batch.cpu_ns, batch.size,
                        batch.voluntary, batch.involuntary, batch.waited_ns)


class _PicklableOrThreads(Executor):
    """The process target of a call, unless a batch cannot be pickled: then
    that batch and the rest of the call stay on the threads (which run
    anything), rather than failing a call that threads would run.  Made
    with ``boot`` instead of ``processes``: ready once the boot made them."""

    def __init__(self, router, processes, boot=None):
        super().__init__(router.n_workers)
        self.router = router
        self.processes = processes
        self.boot = boot
        self.min_batch_seconds = PROCESS_MIN_BATCH_SECONDS

    def submit(self, batch):
        router = self.router
        if router.out_of_process:
            try:
                self.processes.submit(batch)
                return
            except (pickle.PicklingError, TempFolderError) as exc:
                # (Threads need no temp folder for large arrays either.)
                router.route_to(self, False)  # the router no longer claims batches
                router.choice = (THREADS, 0.0, "tasks cannot be sent to processes")
                router._stop_checking()  # threads it is, whatever they measure
                router._say(f"Using {THREADS}: tasks cannot be sent to worker "
                            f"processes ({exc})")
            batch.claimed = False  # claimed by the router for the processes
        router.first.submit(batch)

    def ready(self):
        if self.processes is None:
            self.processes = self.boot.executor
            if self.processes is None:
                return False
        return self.processes.ready()

    def unavailable(self):
        """Why the boot made no process executor, once it is over (else '')."""
        return self.boot.failed if self.boot is not None and self.processes is None else ""

    def boot_over(self):
        if self.boot is not None:
            self.boot.over()

    def call_finished(self, call):
        self.boot_over()
        if self.processes is not None:
            self.processes.call_finished(call)  # its temp files, if any


# While a cold process pool boots, the call's threads go on running its
# GIL-bound batches, and each time the boot (its imports, its file reads, the
# pool's I/O thread taking the workers' first messages) waits for the GIL, it
# waits out a switch interval (5 ms by default): a boot of ~0.1 s took 0.3 s
# and more, and in 2 of 8 fresh interpreters (bench_routing's gil workload)
# it outlasted the whole call, which then ran on threads only (1.03x and 1.13x
# sequential, against 0.68-0.76x when the pool came up at ~0.15 s).  Until the
# pool is up, the interpreter switches threads this often (restored after).
BOOT_SWITCH_INTERVAL_S = 0.0005
_switches_lock = threading.Lock()
_switches_users = 0
_switches_saved = None


def _boot_switches(booting):
    """Count one more (``booting``) or one fewer boot that wants quick GIL
    switches; the first sets them, the last restores the interval it found
    (unless someone changed it meanwhile)."""
    global _switches_users, _switches_saved
    with _switches_lock:
        if booting:
            _switches_users += 1
            if _switches_users == 1:
                _switches_saved = sys.getswitchinterval()
                if _switches_saved > BOOT_SWITCH_INTERVAL_S:
                    sys.setswitchinterval(BOOT_SWITCH_INTERVAL_S)
        else:
            _switches_users -= 1
            if (_switches_users == 0 and _switches_saved is not None
                    and abs(sys.getswitchinterval() - BOOT_SWITCH_INTERVAL_S) < 1e-7):
                sys.setswitchinterval(_switches_saved)


class _ProcessBoot:
    """Makes the process executor of a call in a thread of its own: the
    imports of the process backend and cloudpickle, the fork server's start
    and the pool's I/O thread cost the caller 35-115 ms here, during which
    it dispatched nothing (and its imports took the GIL from the threads
    running its batches all the same).  ``executor`` is set once made;
    ``failed`` says why there is none.  Quick GIL switches last until
    ``over()`` (see BOOT_SWITCH_INTERVAL_S)."""

    def __init__(self, n_workers, plan):
        self.executor = None
        self.failed = ""
        self.switching = True
        _boot_switches(True)
        thread = threading.Thread(target=self._boot, args=(n_workers, plan),
                                  name="cyjob-process-boot", daemon=True)
        try:
            thread.start()
        except BaseException:
            self.over()
            raise

    def over(self):
        """The pool is up, or the call no longer waits for it."""
        if self.switching:
            self.switching = False
            _boot_switches(False)

    def _boot(self, n_workers, plan):
        try:
            executor = _process_executor(n_workers, plan)
        except BaseException as exc:  # (a daemon thread: nobody to raise it to)
            self.failed = f"{type(exc).__name__}: {exc}"
            return
        if executor is None:
            self.failed = "not available"
        self.executor = executor


def _process_pool_running():
    """The process backend's pool is up in this process (a choice of
    processes costs no start-up then)."""
    # (getattr: the module may be half imported by another thread.)
    pool = getattr(sys.modules.get("cyjob.backends.processes.pool"), "_pool", None)
    return pool is not None and not pool.closed and pool.pid == os.getpid()


def _process_executor(n_workers, plan):
    try:
        backend = get_backend("processes")
    except (NotImplementedError, ValueError):
        return None
    from cyjob.backends.processes import ProcessExecutor

    executor = backend.executor(n_workers, plan)
    # Not a pool of processes (at interpreter exit, say): stay on threads.
    return executor if isinstance(executor, ProcessExecutor) else None


class AutoBackend(Backend):
    """Threads, processes or the caller's thread, chosen by measurement."""

    name = "auto"
    supports_sharedmem = False

    def executor(self, n_workers, plan=None):
        growing = n_workers > 1 and not pool_complete(n_workers)
        if growing:
            # Until a call needs every thread, calls probe on a pool of
            # n_workers threads (the caller never runs a task nobody has
            # measured) started as they need them (AutoExecutor._first_task,
            # _choose): each thread start waits for the new thread to run,
            # up to several ms on a loaded machine, as long as a call of tiny
            # tasks (issue 15), which needs one thread for its first call and
            # none for the next, remembered inline.  The caller's own pool
            # comes with the first call that runs on threads.
            first = get_pool(n_workers, lazy=True)
        else:
            first = _THREADS.executor(n_workers, plan)
        executor = AutoExecutor(n_workers, first)
        executor.plan = plan
        executor.growing = growing and isinstance(first, ThreadExecutor)
        return executor
