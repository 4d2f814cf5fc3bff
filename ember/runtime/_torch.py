"""torch, imported when a step first needs it, and the thread count ember's kernels run on.

Importing torch takes ~1 s (2-core Xeon), two thirds of what loading MiniLM's artifact
took from process start. A program whose steps all run on ember's own kernels (generated
segments, the tiled GEMM and attention of runtime/native/gemm.py) never needs it: the executor
hands those externs numpy arrays, and the extern modules refer to torch through `torch`
and `F` here, stand-ins that import the real modules on their first attribute access.
Once imported, a stand-in's namespace is the module's, so later lookups cost what a real
module's do. The import sets torch's thread count to the executor's (`set_threads`).

`threads()` is the thread count of the last executor made (its intra_op_threads): the
tiled kernels read it here, where they read torch.get_num_threads() before; torch's own
kernels get the same count.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings

import numpy as np

from .._deferred import Deferred

_requested: int | None = None  # the last executor's thread count


def default_threads() -> int:
    """Threads per kernel when the caller names none: OMP_NUM_THREADS where it is set to
    a positive number (as torch and OpenMP read it), else every core this process may
    run on: its CPU affinity (a `taskset`'s or cpuset's share, not the whole host's),
    capped by a cgroup CPU quota (a container's `--cpus`, `cgroup_cpus`): two threads
    spinning at each barrier on a quota of one CPU are throttled in turn.

    The count is fixed; where other load keeps the cores busy, runs go serial while it
    lasts (runtime/contention.py: on 2 cores with one busy, one thread runs MiniLM b1
    1.4-1.7x faster than two, but 1.6x slower when both are free; OMP_WAIT_POLICY=PASSIVE
    costs 1.6-2x on a quiet machine: docs/benchmarks.md, benchmarks/contention.py)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cores()


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup quota."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    quota = cgroup_cpus()
    return min(cores, quota) if quota else cores


# where a cgroup CPU quota is read: v2's "quota period" (or "max period"), then v1's two
# files; inside a container (its own cgroup namespace) these are the container's
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1 = (("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
             ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us"))


def cgroup_cpus() -> int | None:
    """The CPUs a cgroup CPU quota lets this process use (quota / period, rounded up, at
    least 1), or None where no quota is set or none can be read."""
    def read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    fields = (read(CGROUP_CPU_MAX) or "").split()
    if len(fields) != 2:
        for quota_path, period_path in CGROUP_V1:
            quota, period = read(quota_path), read(period_path)
            if quota is not None and period is not None:
                fields = [quota, period]
                break
    if len(fields) != 2 or not fields[1].isdigit() or not fields[0].lstrip("-").isdigit():
        return None  # no quota ("max", -1), or no cgroup files
    quota, period = int(fields[0]), int(fields[1])
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


_default: int | None = None  # default_threads(), worked out once for `threads`


def threads() -> int:
    """Threads per kernel: the last executor's, else `default_threads()` (worked out once:
    it reads the environment and cgroup files, ~40 us, and every tiled GEMM asks)."""
    global _default
    if _requested:
        return _requested
    if _default is None:
        _default = default_threads()
    return _default


def set_threads(n: int) -> None:
    """Run kernels on `n` threads: ember's tiled ones now, torch's now where it is
    imported, else when it is."""
    global _requested
    _requested = n
    real = sys.modules.get("torch")
    if real is not None and hasattr(real, "set_num_threads"):  # (not while torch imports itself)
        real.set_num_threads(n)


def _import(name: str) -> types.ModuleType:
    """The module `name`, and torch's thread count the executor's: set here too where
    someone else imported torch after the executor was made (torch's own default, the
    physical cores, can be fewer)."""
    module = importlib.import_module(name)
    if _requested:
        sys.modules["torch"].set_num_threads(_requested)
    return module


torch = Deferred("torch", _import)
F = Deferred("torch.nn.functional", _import)


_TORCH_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8,
                                        np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


def tensor(a):
    """A torch view of a numpy array (None where torch has no such dtype, or for anything
    else). bfloat16 and float8e4m3fn (ml_dtypes' in numpy) are viewed through their bits. A read-only
    array (a weight mapped from a file) is viewed without torch's warning: externs only
    read their inputs."""
    if not isinstance(a, np.ndarray):
        return None
    if a.dtype.kind == "V":  # ml_dtypes' (bfloat16, float8...): viewed through their bits
        bits = _ML_DTYPES.get(a.dtype.name)
        return None if bits is None else tensor(a.view(bits[0])).view(getattr(torch, bits[1]))
    if a.dtype not in _TORCH_DTYPES:
        return None
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def torch_dtype(dtype) -> "torch.dtype":
    """The torch dtype of a numpy dtype (bfloat16 ml_dtypes'); None where torch has none."""
    t = tensor(np.zeros(0, dtype))
    return None if t is None else t.dtype


def array(t) -> np.ndarray:
    """A numpy view of a torch tensor (an array as it is)."""
    if isinstance(t, np.ndarray):
        return t
    for name, (bits, torch_name) in _ML_DTYPES.items():
        if t.dtype == getattr(torch, torch_name):
            return t.view(torch.int16 if np.dtype(bits).itemsize == 2 else torch.int8).numpy().view(_ml_dtype(name))
    return t.numpy()


# ml_dtypes' types (numpy's names) that torch has: the unsigned integer of their bits, torch's name
_ML_DTYPES = {"bfloat16": (np.uint16, "bfloat16"), "float8_e4m3fn": (np.uint8, "float8_e4m3fn")}


def _ml_dtype(name: str):
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name))
