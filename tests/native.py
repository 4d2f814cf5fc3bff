"""Hand-written kernels for tests that call their wrappers (ember/runtime/native/) directly
rather than through a compiled program, which names the libraries it needs itself, and the
references those tests share (the tiled kernels' epilogue activations)."""

import numpy as np

from ember.codegen import handwritten
from ember.runtime import native


def install(*names: str) -> None:
    """Build (or find in the kernel cache) and install kernels `names`; each must build."""
    native.install({name: handwritten.build(name) for name in names})
    missing = [name for name in names if not native.available(name)]
    assert not missing, f"the hand-written kernels {missing} did not build"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo's first "flags" line; none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def activation_reference(name: str, v: np.ndarray) -> np.ndarray:
    """The tiled kernels' epilogue activations (runtime/native/gemm.py ACTIVATIONS), in float64."""
    from math import erf, pi, sqrt

    if name == "relu":
        return np.maximum(v, 0)
    if name == "gelu":
        return 0.5 * v * (1 + np.vectorize(erf)(v / sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * v * (1 + np.tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3)))
    if name == "silu":
        return v / (1 + np.exp(-v))
    if name == "hardswish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    assert name == "", name
    return v
