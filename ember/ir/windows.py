"""The sliding windows of a convolution or pooling over [N, C, *spatial] (numpy views of
the padded input), in a module of its own so that the runtime's integer convolution reads
its patches the way the reference does without importing every op family (and with them
onnx and ml_dtypes)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def windows(x: np.ndarray, kernel, strides, dilations, pads, fill) -> np.ndarray:
    """[N, C, *spatial] -> [N, C, *out, *kernel] views of x padded with `fill` (pads: a
    (begin, end) pair per spatial axis)."""
    rank = len(kernel)
    x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    axes = tuple(range(2, 2 + rank))
    w = sliding_window_view(x, extent, axis=axes)
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
        + tuple(slice(None, None, d) for d in dilations)
    return w[index]
