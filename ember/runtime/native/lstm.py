"""The step loop of a float32 LSTM (codegen's cpu_lstm.cpp: ember/codegen/handwritten.py,
"lstm"). The `recurrent` extern runs an LSTM on it where torch's RNN kernel would
spend its time on dispatch: batch 1-8 and small hidden sizes, as wake-word heads and
voice-activity models have (openWakeWord's hey_mycroft: two bidirectional LSTMs of 16
steps took 0.46 ms in torch)."""

from __future__ import annotations

import ctypes

from . import function

_ARGS = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 3 + [ctypes.c_int64]


def _kernel():
    return function("lstm", "ember_lstm", _ARGS)


def available() -> bool:
    """Whether a Program named the kernel's library (and it built)."""
    return _kernel() is not None


def run(xw, r, h, c, y, backward: list[bool], threads: int = 1, x=None, w=None, bias=None) -> None:
    """xw [dirs, steps, batch, 4H] (X.W + both biases, gates i f g o), r [dirs, H, 4H]
    (R transposed); h and c [dirs, batch, H] hold the initial states and receive the
    final ones; y [steps, dirs, batch, H] (or None) every step's h. Directions in
    `backward` run from the last step. With xw None, the kernel projects x [steps,
    batch, input] itself by w [dirs, input, 4H] and bias [dirs, 4H] (all contiguous)."""
    dirs, hidden = r.shape[0], r.shape[1]
    if xw is None:
        steps, batch, size = x.shape
        projection = (x.data_ptr(), w.data_ptr(), bias.data_ptr(), size)
    else:
        _, steps, batch, _ = xw.shape
        projection = (None, None, None, 0)
    _kernel()(None if xw is None else xw.data_ptr(), r.data_ptr(), h.data_ptr(), c.data_ptr(),
              None if y is None else y.data_ptr(), dirs, steps, batch, hidden,
              sum(1 << d for d, back in enumerate(backward) if back), max(1, min(threads, dirs)), *projection)
