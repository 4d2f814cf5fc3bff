"""Externs for the signal ops: DFT and STFT on torch.fft (in the input's precision, as
numpy's FFT the definition names computes), and the windows and mel filter bank generators in
closed form. Sizes fed at run time are checked against the declared output type."""

from __future__ import annotations

import math

from ._torch import torch

from ..errors import ExecutionError
from .externs import extern


def _scalar(t, default=None):
    return default if t is None or not t.numel() else t.reshape(-1)[0].item()


def _check_shape(params, y, shape) -> None:
    if list(shape) != list(y.shape):
        raise ExecutionError(f"{params['where']}: the values fed give an output of shape {list(shape)}, "
                             f"but the model's declared output type is {list(y.shape)}")


def _complex(x: torch.Tensor) -> torch.Tensor:
    """[..., 1] (real) or [..., 2] (real, imaginary) as a complex tensor [...] of x's precision."""
    complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    return torch.complex(x[..., 0], x[..., 1]) if x.shape[-1] == 2 else x[..., 0].to(complex_dtype)


def _store_complex(y: torch.Tensor, z: torch.Tensor) -> None:
    y.copy_(torch.stack([z.real, z.imag], dim=-1) if y.shape[-1] == 2 else z.real[..., None])


@extern("dft")
def dft(params, x, dft_length, axis, y):
    rank = x.dim()
    ax = _scalar(axis, -2) % rank
    if ax == rank - 1:
        raise ExecutionError(f"{params['where']}: axis {_scalar(axis)} is the real/imaginary axis")
    inverse, onesided = params["inverse"], params["onesided"]
    n = _scalar(dft_length, 2 * (x.shape[ax] - 1) if inverse and onesided else x.shape[ax])
    signal = _complex(x)
    if inverse and onesided:
        result = torch.fft.irfft(signal, n=n, dim=ax)
    elif inverse:
        result = torch.fft.ifft(signal, n=n, dim=ax)
    else:
        result = torch.fft.fft(signal, n=n, dim=ax)
        if onesided:
            result = result.narrow(ax, 0, n // 2 + 1)
    _check_shape(params, y, (*result.shape, 1 if inverse and onesided else 2))
    _store_complex(y, result)


@extern("stft")
def stft(params, x, frame_step, window, frame_length, y):
    """Frames of `frame_length` every `frame_step` samples, each times the window, then
    its DFT (the first half and the middle bin when onesided)."""
    length = _scalar(frame_length, window.shape[0] if window is not None else x.shape[-2])
    if window is not None and window.shape[0] != length:
        raise ExecutionError(f"{params['where']}: a window of {window.shape[0]} for frames of {length}")
    step = _scalar(frame_step)
    num_frames = 1 + (x.shape[-2] - length) // step
    signal = _complex(x)
    frames = signal.unfold(-1, length, step)[..., :num_frames, :]  # [batch, frames, length]
    if window is not None:
        frames = frames * window.to(torch.float64)
    result = torch.fft.fft(frames, dim=-1)
    if params["onesided"]:
        result = result[..., :length // 2 + 1]
    _check_shape(params, y, (*result.shape, 2))
    _store_complex(y, result)


def _window_points(params, size, y) -> tuple[torch.Tensor, int]:
    """(n = 0 .. size-1, the period N) of a window of the size fed."""
    n = int(_scalar(size))
    _check_shape(params, y, (n,))
    return torch.arange(n, dtype=torch.float64), n if params["periodic"] else n - 1


@extern("window")
def window(params, size, y):
    n, period = _window_points(params, size, y)
    kind, phase = params["kind"], 2 * math.pi * n / period
    if kind == "hann":
        w = torch.sin(math.pi * n / period) ** 2
    elif kind == "hamming":
        alpha = 25.0 / 46.0
        w = alpha - (1 - alpha) * torch.cos(phase)
    else:  # blackman
        w = 0.42 - 0.5 * torch.cos(phase) + 0.08 * torch.cos(2 * phase)
    y.copy_(w.to(y.dtype))


@extern("mel_weight_matrix")
def mel_weight_matrix(params, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, y):
    """Triangular filters, evenly spaced on the mel scale, over the DFT's bins."""
    bins, length, rate = int(_scalar(num_mel_bins)), int(_scalar(dft_length)), _scalar(sample_rate)
    num_spectrogram_bins = length // 2 + 1
    _check_shape(params, y, (num_spectrogram_bins, bins))
    low = 2595 * math.log1p(_scalar(lower_edge_hertz) / 700) / math.log(10)
    high = 2595 * math.log1p(_scalar(upper_edge_hertz) / 700) / math.log(10)
    mel = torch.arange(bins + 2, dtype=torch.float64) * ((high - low) / (bins + 2)) + low
    hertz = 700 * torch.expm1(mel / 2595 * math.log(10))
    edges = torch.div((length + 1) * hertz, rate, rounding_mode="floor").long()
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    j = torch.arange(num_spectrogram_bins)[:, None]
    rising = torch.where((j >= left) & (j <= centre), (j - left) / (centre - left).clamp(min=1), 0.0)
    rising = torch.where(centre == left, (j == centre).to(torch.float64), rising)
    falling_part = (j >= centre) & (j < right)
    falling = (right - j) / (right - centre).clamp(min=1)
    y.copy_(torch.where(falling_part, falling, rising).to(y.dtype))
