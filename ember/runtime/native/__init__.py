"""The C++ libraries a Program names, loaded and called through ctypes: its generated
kernels' library (`Program.library`) and the hand-written kernels codegen built for it
(`Program.libraries`: the tiled GEMM, the small convolution, the LSTM and
DynamicQuantizeLSTM step loops, paged attention; their sources and builds are codegen's,
ember/codegen/handwritten.py). The runtime builds nothing: a kernel no Program has named
(or one that did not build) is not available, and its extern takes its other path.

`install(program.libraries)` (the executor, when it is made) records and loads them;
the modules beside this one wrap their functions (`function`). A hand-written kernel is
one library per process: every Program that names it names the same source's build.

`empty` gives the arrays the kernels' packed weights live in: past 256 KiB, from pools of
private anonymous memory advised onto transparent huge pages (Linux), so that a model whose
weights stream from memory on every run (MiniLM's 42 MB past a 32 MB L3) walks 2 MiB pages
instead of 4 KiB ones.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger("ember.runtime")

_PATHS: dict[str, str] = {}  # kernel name -> the library installed for it
_FUNCTIONS: dict[tuple[str, str], object] = {}  # (kernel, symbol) -> its typed ctypes function


@functools.lru_cache(maxsize=1)
def _torch_openmp() -> None:
    """Load the OpenMP runtime torch ships (torch/lib/libgomp*.so*) before any kernel
    library, so the kernels and torch share torch's own runtime (one pool of threads)
    whichever comes first: a kernel library loaded first would bring in the system's
    libgomp, and torch, imported later, would be bound to that one instead of the one it
    was built with (the dynamic linker matches libgomp.so.1 by name). Found without
    importing torch (~1 s, which a program that runs only ember's kernels never pays);
    where torch ships none, torch itself is imported first."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return
    found = sorted((Path(spec.origin).parent / "lib").glob("libgomp*.so*"))
    if found:
        ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
    else:
        import torch  # noqa: F401


@functools.lru_cache(maxsize=256)
def load(path: str) -> ctypes.CDLL:
    """The shared library at `path`, loaded once per process."""
    _torch_openmp()
    return ctypes.CDLL(path)


def install(libraries: Mapping[str, str | None]) -> None:
    """Use the libraries of `libraries` (kernel name -> path; None: it did not build) for
    those kernels, loaded now (not in a first run). A path that does not load is logged
    and its kernel left as it was."""
    for name, path in libraries.items():
        if not path or _PATHS.get(name) == path:
            continue
        try:
            load(path)
        except OSError as e:
            log.warning("ember: the %s kernel's library %s does not load (%s); its extern takes its other path",
                        name, path, e)
            continue
        _PATHS[name] = path
        for key in [k for k in _FUNCTIONS if k[0] == name]:
            del _FUNCTIONS[key]


def uninstall(name: str | None = None) -> None:
    """Forget kernel `name` (every kernel: None): until a Program names it again it is not
    available (tests)."""
    for kernel in [name] if name is not None else list(_PATHS):
        _PATHS.pop(kernel, None)
        for key in [k for k in _FUNCTIONS if k[0] == kernel]:
            del _FUNCTIONS[key]


def installed(name: str) -> str | None:
    """The path of the library installed for kernel `name`, or None."""
    return _PATHS.get(name)


def function(name: str, symbol: str, argtypes: list, restype=None):
    """Function `symbol` of kernel `name`'s library, typed; None where no Program has
    named a library for it, or where its library lacks the symbol (one built before it:
    an older artifact's, which ships its own build; the caller takes its other path)."""
    key = (name, symbol)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        path = _PATHS.get(name)
        if path is None:
            return None
        fn = getattr(load(path), symbol, False)
        if fn:
            fn.argtypes, fn.restype = argtypes, restype
        _FUNCTIONS[key] = fn
    return fn or None


def available(name: str) -> bool:
    return name in _PATHS


HUGE_PAGE = 2 << 20
POOL_BYTES = 32 << 20  # one pool's size (virtual: a page is backed once written)
POOLED_BYTES = 256 << 10  # arrays this big or bigger come from a pool
_POOL_LOCK = threading.Lock()
_pool: list = [None, 0]  # the pool arrays are cut from now (an mmap), and the bytes used of it


def _mapping(nbytes: int):
    """Private anonymous memory of `nbytes` (a multiple of HUGE_PAGE), advised onto huge
    pages where the platform has madvise (the advice is a hint: no error where the kernel
    declines it). None where anonymous mappings are not available."""
    try:
        if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS"):
            # (mmap(-1, n) alone maps shared memory, which the anonymous-memory setting of
            # transparent huge pages does not cover)
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            buf = mmap.mmap(-1, nbytes)
    except (OSError, ValueError):
        return None
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return buf


def empty(count: int, dtype) -> np.ndarray:
    """An uninitialized, writable, 64-byte-aligned 1-d array of `count` elements of `dtype` for
    a kernel's packed weights: np.empty's below POOLED_BYTES, else cut from a pool of huge
    pages (a pool is unmapped once every array cut from it is gone and a newer pool has taken
    its place: at most one pool, 32 MiB of address space, outlives its arrays). An array over
    half a pool gets a mapping of its own."""
    dtype = np.dtype(dtype)
    nbytes = int(count) * dtype.itemsize
    if nbytes < POOLED_BYTES:
        return np.empty(count, dtype)
    need = -(-nbytes // 64) * 64
    with _POOL_LOCK:
        if need > POOL_BYTES // 2:
            buf, offset = _mapping(-(-need // HUGE_PAGE) * HUGE_PAGE), 0
        else:
            if _pool[0] is None or _pool[1] + need > len(_pool[0]):
                _pool[:] = [_mapping(POOL_BYTES), 0]
            buf, offset = _pool
            if buf is not None:
                _pool[1] += need
    if buf is None:
        return np.empty(count, dtype)
    return np.frombuffer(buf, dtype, count, offset)
