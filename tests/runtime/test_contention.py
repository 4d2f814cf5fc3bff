"""The contention guard (runtime/contention.py): runs go serial while this process's threads
wait for cores, probe back, and stay parallel on quiet cores. The state machine runs on a
fake clock and fake delays; the serial mode on the real OpenMP runtime (a kernel's team);
an executor under a guard that finds the cores contended gives the same outputs."""

import subprocess

import numpy as np
import pytest

from ember.runtime import contention
from ember.runtime.contention import BACKOFF, INTERVAL, LIMIT, PROBE, Guard


class Fake:
    """A clock and a run-queue delay that advance as the test says."""

    def __init__(self):
        self.now, self.delay, self.levels = 0.0, 0, []

    def advance(self, seconds: float, waiting: float) -> None:
        """`seconds` pass while `waiting` threads on average wait for a core."""
        self.now += seconds
        self.delay += int(waiting * seconds * 1e9)


def guard_on(fake: Fake, openmp=None, enabled: bool = True) -> Guard:
    """A guard on `fake`'s clock and delay that sets OpenMP's levels through `openmp` (by
    default: into fake.levels, the runtime's own value 1)."""
    return Guard(clock=lambda: fake.now, delays=lambda: fake.delay,
                 openmp=(fake.levels.append, 1) if openmp is None else openmp, enabled=enabled)


@pytest.fixture
def openmp():
    """The real OpenMP runtime's max-active-levels (its setter, its own value), put back after."""
    from ember.runtime import native

    native._torch_openmp()  # (the runtime the kernels load, as they load it)
    found = contention._openmp_levels()
    assert found is not None, "the kernels' OpenMP runtime is loaded"
    yield found
    found[0](found[1])


def run(guard: Guard, fake: Fake, seconds: float, waiting: float, threads: int = 2) -> bool:
    """One run of `seconds` on `threads`; whether it ran serial."""
    guard.before_run(threads)
    serial = guard.serial
    fake.advance(seconds, waiting)
    guard.after_run(threads)
    return serial


def test_quiet_cores_keep_runs_parallel():
    fake = Fake()
    guard = guard_on(fake)
    for _ in range(500):
        assert not run(guard, fake, 0.02, waiting=0.05)
    assert guard.switches == 0 and fake.levels == []


def test_contended_cores_make_runs_serial_and_probes_bring_them_back():
    fake = Fake()
    guard = guard_on(fake)
    run(guard, fake, 0.02, waiting=0.0)  # (the first sample)
    while not guard.serial:  # a core busy elsewhere: the second thread waits ~all the time
        run(guard, fake, 0.1, waiting=1.0)
    assert fake.levels[-1:] != [0]  # applied at the next run's start
    assert run(guard, fake, 0.05, waiting=0.0)
    assert fake.levels[-1] == 0
    # still contended: each probe (PROBE seconds in parallel) finds it so, and the wait
    # before the next one doubles up to BACKOFF's most
    probe_starts = []
    for _ in range(2000):
        before = guard.probes
        run(guard, fake, 0.05, waiting=1.0 if not guard.serial else 0.0)
        if guard.probes > before:
            probe_starts.append(fake.now)
    assert guard.probes >= 4
    gaps = np.diff(probe_starts)
    assert gaps[0] < gaps[-1] <= BACKOFF[1] + PROBE + 4 * INTERVAL
    assert guard.serial or guard._probe_start is not None
    # the other load ends: the next probe finds the cores free, and runs stay parallel
    while guard.serial or guard._probe_start is not None:
        run(guard, fake, 0.05, waiting=0.0)
    assert not run(guard, fake, 0.05, waiting=0.0) and fake.levels[-1] == 1
    switches = guard.switches
    for _ in range(200):
        assert not run(guard, fake, 0.05, waiting=0.0)
    assert guard.switches == switches and fake.levels[-1] == 1


def test_the_limit_scales_with_the_threads():
    # 16 threads with one core busy elsewhere: one thread waits half the time, far below
    # LIMIT x 15, and 15 threads still beat one: runs stay parallel
    fake = Fake()
    guard = guard_on(fake)
    for _ in range(100):
        assert not run(guard, fake, 0.05, waiting=0.5, threads=16)
    # every thread waiting half the time: more than LIMIT of the workers' time
    for _ in range(5):
        run(guard, fake, 0.05, waiting=8.0, threads=16)
    assert guard.serial
    assert LIMIT * 15 < 8.0


def test_one_thread_or_a_disabled_guard_does_nothing():
    fake = Fake()
    guard = guard_on(fake)
    for _ in range(20):
        run(guard, fake, 0.1, waiting=1.0, threads=1)
    assert guard.switches == 0
    off = guard_on(fake, enabled=False)
    for _ in range(20):
        run(off, fake, 0.1, waiting=1.0)
    assert off.switches == 0 and fake.levels == []


def test_the_run_delay_reader_reads_this_process():
    read = contention._run_delay_reader()
    assert read is not None, "Linux's /proc/self/task/*/schedstat"
    first = read()
    assert isinstance(first, int) and first >= 0
    assert read() >= first


def test_serial_mode_makes_every_parallel_region_one_thread(tmp_path, openmp):
    from ember.codegen import cpu
    from ember.runtime import native

    source = tmp_path / "team.cpp"
    source.write_text("#include <omp.h>\nextern \"C\" int team(void) { int n = 0;\n#pragma omp parallel num_threads(2)\n"
                      "  {\n#pragma omp single\n    n = omp_get_num_threads();\n  }\n  return n; }\n")
    library = tmp_path / "team.so"
    subprocess.run([cpu.compiler(), "-O1", "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(library)],
                   check=True)
    team = native.load(str(library)).team
    fake = Fake()
    guard = guard_on(fake, openmp)
    assert team() == 2
    run(guard, fake, 0.02, waiting=0.0)
    while not guard.serial:
        run(guard, fake, 0.1, waiting=1.0)
    guard.before_run(2)
    assert team() == 1  # num_threads(2) notwithstanding
    while guard.serial:
        run(guard, fake, 0.1, waiting=0.0)
    guard.before_run(2)
    assert team() == 2


def test_a_model_under_a_contended_guard_runs_serial_with_the_same_outputs(monkeypatch, minilm_onnx, openmp):
    import ember
    from ember import _builtin
    from ember.runtime import executor

    feeds = _builtin.tokenize(["a sentence to embed", "and another one, a little longer"], max_length=16)
    model = ember.compile(str(minilm_onnx), intra_op_threads=2)
    want = model.run(feeds)
    fake = Fake()
    guard = guard_on(fake, openmp)
    monkeypatch.setattr(executor, "GUARD", guard)
    serial_runs = 0
    for _ in range(12):
        guard.before_run(2)
        serial_runs += guard.serial
        got = model.run(feeds)
        fake.advance(0.1, waiting=1.0)  # (after the run's own sample: the next one sees it)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert guard.switches >= 1 and serial_runs >= 1


def test_a_thread_that_runs_after_another_applies_the_mode_the_other_left_behind():
    # libgomp keeps the setting process-wide: thread A applies serial, the mode turns
    # parallel, and thread B (whose own last mode was parallel) must set it back
    import threading

    fake = Fake()
    guard = guard_on(fake)
    run(guard, fake, 0.02, waiting=0.0)
    while not guard.serial:
        run(guard, fake, 0.1, waiting=1.0)
    t = threading.Thread(target=guard.before_run, args=(2,))
    t.start()
    t.join()
    assert fake.levels[-1] == 0  # thread A's serial
    guard.serial = False  # (a probe's switch, made by a sample in another thread)
    guard.before_run(2)  # this thread never applied serial itself
    assert fake.levels[-1] == 1


def test_a_burst_shorter_than_two_samples_changes_nothing():
    # another pool's threads spinning for ~40 ms after its own runs (onnxruntime's, in the
    # same process) contend one sample; runs stay parallel
    fake = Fake()
    guard = guard_on(fake)
    run(guard, fake, 0.02, waiting=0.0)
    for _ in range(50):
        run(guard, fake, 0.06, waiting=1.0)  # one contended sample...
        for _ in range(5):
            assert not run(guard, fake, 0.06, waiting=0.0)  # ...then quiet ones
    assert guard.switches == 0


def test_a_guard_that_finds_no_openmp_runtime_yet_looks_again(monkeypatch):
    fake = Fake()
    found = []
    monkeypatch.setattr(contention, "_openmp_levels", lambda: found[0] if found else None)
    guard = Guard(clock=lambda: fake.now, delays=lambda: fake.delay, enabled=True)
    for _ in range(5):
        run(guard, fake, 0.1, waiting=1.0)
    assert guard.switches == 0 and guard.enabled  # (nothing to set yet: inert, not off)
    found.append((fake.levels.append, 1))  # a kernel library loads the runtime
    fake.advance(1.0, waiting=0.0)
    for _ in range(5):
        run(guard, fake, 0.1, waiting=1.0)
    assert guard.serial and fake.levels == [0]  # (found, sampled twice, and applied)
