"""Serial runs while the cores are contended: the guard the executor consults around each run.

ember's kernels split each step between `threads` OpenMP threads and wait at the step's end
for all of them (a barrier a step: MiniLM b1 has 43). Where another process (or this one's
other threads) keeps a core busy, the thread the scheduler parks there arrives late at every
barrier while the others spin: on a 2-core AMD EPYC, one other Python process at ~55% of a
core took MiniLM b1 from 18 ms to 65-260 ms a run on two threads, where one thread took
35-45 (onnxruntime, whose pool revokes work a parked thread has not started: 78).

The guard watches the run-queue delay of this process's threads (Linux's
/proc/self/task/*/schedstat: the nanoseconds each thread was runnable but waited for a
core), sampled at run ends at most every `INTERVAL` seconds. Where the delay reaches
`LIMIT` of the worker threads' time (half a worker's, per worker: on 2 threads, the second
one waits half the time) in `STRIKES` samples in a row, runs go serial: OpenMP's
max-active-levels set to 0 makes every parallel region of ember's kernels and of torch's
one thread, whatever its num_threads. From then on a probe runs in parallel for `PROBE`
seconds after `BACKOFF` (0.25 s, doubling to 8 s while probes find the cores still
contended, back to 0.25 when one finds them free), and the cores' delay during it decides. On a quiet machine the delay stays near 0 and nothing
changes (one read of a few small files every 50 ms of runs, ~30 us).

Off with EMBER_CONTENTION_GUARD=0 in the environment; inert on one thread, where /proc has no
schedstat, or where no OpenMP runtime is loaded. `GUARD.switches` counts its changes of mode.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

INTERVAL = 0.05  # seconds between samples of the threads' delay (at run ends)
LIMIT = 0.5  # delay per worker thread (a share of wall time) from which runs go serial
STRIKES = 2  # contended samples in a row that make runs serial (not one: another pool's threads
            # spin ~40 ms after their runs, onnxruntime's in the same process among them)
PROBE = 0.1  # seconds of parallel runs that decide a probe
BACKOFF = (0.25, 8.0)  # seconds of serial runs before a probe: first, most
TASKS_REFRESH = 1.0  # seconds between listings of the process's threads


def _run_delay_reader():
    """A function giving the run-queue delay (ns) summed over this process's threads, or
    None where /proc has no schedstat. The files stay open between reads (a read of each
    is a pread: ~3 us, where opening them costs ~60)."""
    if not os.path.exists("/proc/self/task"):
        return None
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            if len(f.read().split()) < 2:
                return None
    except OSError:
        return None
    fds: dict[str, int] = {}
    listed = [-1.0]

    def read() -> int:
        now = time.monotonic()
        if now - listed[0] >= TASKS_REFRESH:
            listed[0] = now
            try:
                tids = set(os.listdir("/proc/self/task"))
            except OSError:
                tids = set(fds)
            for tid in [t for t in fds if t not in tids]:
                os.close(fds.pop(tid))
            for tid in tids - fds.keys():
                try:
                    fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
                except OSError:
                    pass
        total = 0
        for tid, fd in list(fds.items()):
            try:
                total += int(os.pread(fd, 96, 0).split()[1])
            except (OSError, IndexError, ValueError):  # (a thread that ended since the listing)
                os.close(fds.pop(tid))
        return total

    return read


def _openmp_levels():
    """(set, the runtime's own value) for OpenMP's max-active-levels, or None where no
    OpenMP runtime is loaded (the kernels load torch's: runtime/native `_torch_openmp`)."""
    try:
        lib = ctypes.CDLL(None)
        setter, getter = lib.omp_set_max_active_levels, lib.omp_get_max_active_levels
    except (OSError, AttributeError):
        return None
    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
    return setter, getter()


class Guard:
    """Process-wide: whether ember's runs are serial now, and the samples that decide it.
    `clock` and `delays` (ns summed over the threads, or None) are injectable for tests."""

    def __init__(self, clock=time.monotonic, delays=None, openmp=None, enabled: bool | None = None):
        if enabled is None:
            enabled = os.environ.get("EMBER_CONTENTION_GUARD", "1").strip() not in ("0", "off", "false", "no")
        self.enabled = enabled
        self.clock = clock
        self._delays = delays
        self._openmp = openmp
        self._ready = False
        self._openmp_retry = float("-inf")  # when to look for the OpenMP runtime again
        self._lock = threading.Lock()
        self._local = threading.local()  # the mode this thread last applied
        self._applied = False  # the mode any thread last applied
        self.serial = False  # the mode runs take now
        self.switches = 0  # changes of mode so far
        self.probes = 0  # parallel probes started from serial mode
        self._last: tuple[float, int] | None = None  # (time, delay) of the last sample
        self._probe_start: float | None = None
        self._strikes = 0  # contended samples in a row (parallel, not probing)
        self._probe_at = 0.0
        self._backoff = BACKOFF[0]

    def _prepare(self) -> bool:
        if not self._ready:
            if self._delays is None:
                self._delays = _run_delay_reader()
                if self._delays is None:  # (no schedstat: never)
                    self.enabled = False
                    return False
            if self._openmp is None:  # (none loaded yet: a program of no kernel library; asked
                now = self.clock()      # again a second on, once one may have loaded it)
                if now < self._openmp_retry:
                    return False
                self._openmp, self._openmp_retry = _openmp_levels(), now + 1.0
                if self._openmp is None:
                    return False
            self._ready = True
        return self.enabled

    def before_run(self, threads: int) -> None:
        """Apply the current mode to this thread's parallel regions (where it changed)."""
        if not self.enabled or threads < 2 or not self._prepare():
            return
        serial = self.serial
        # (libgomp keeps max-active-levels process-wide, the OpenMP spec per thread: set
        # where this thread or the process last applied the other mode)
        if getattr(self._local, "serial", False) != serial or self._applied != serial:
            setter, levels = self._openmp
            setter(0 if serial else levels)
            self._local.serial = self._applied = serial

    def after_run(self, threads: int) -> None:
        """Sample the threads' delay (at most every INTERVAL) and change mode where it says."""
        if not self.enabled or threads < 2 or not self._ready or not self._lock.acquire(blocking=False):
            return
        try:
            now = self.clock()
            if self._last is not None and now - self._last[0] < INTERVAL:
                return
            delay = self._delays()
            last, self._last = self._last, (now, delay)
            if last is None:
                return
            share = (delay - last[1]) * 1e-9 / (now - last[0])  # threads waiting, on average
            contended = share >= LIMIT * (threads - 1)
            if self.serial:
                if now >= self._probe_at:  # a probe: parallel runs for PROBE seconds
                    self.serial, self._probe_start = False, now
                    self.probes += 1
                    self.switches += 1
            elif self._probe_start is not None:
                if now - self._probe_start >= PROBE:
                    self._probe_start = None
                    if contended:
                        self._backoff = min(2 * self._backoff, BACKOFF[1])
                        self._go_serial(now)
                    else:
                        self._backoff = BACKOFF[0]
            else:
                self._strikes = self._strikes + 1 if contended else 0
                if self._strikes >= STRIKES:
                    self._go_serial(now)
        finally:
            self._lock.release()

    def _go_serial(self, now: float) -> None:
        self.serial, self._strikes = True, 0
        self._probe_at = now + self._backoff
        self.switches += 1


GUARD = Guard()
