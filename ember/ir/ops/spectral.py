"""Signal ops: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix. Schemas,
type functions and references are ONNX's; the lowerings are externs
(ember/runtime/externs_signal.py) that read the lengths, axes and sizes fed at run
time and check what they give against the output's declared type."""

from __future__ import annotations

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, attrs, out_type, register_lowering
from .image import TORCH_FLOATS
from .onnx_standard import standard_op

_WINDOWS = {"HannWindow": "hann", "HammingWindow": "hamming", "BlackmanWindow": "blackman"}
for _op in ("DFT", "STFT", "MelWeightMatrix", *_WINDOWS):
    standard_op(_op)


@register_lowering("DFT")
def _lower_dft(ctx, node, ins):
    x, dft_length, axis = (ins + [None] * 3)[:3]
    if x.dtype not in FLOATS or len(x.shape) < 2:
        raise NotLowerable("not a float signal")
    a = attrs(node)
    if a["inverse"] and not a["onesided"] and x.dtype == DType.float32:
        # numpy's single-precision inverse FFT (the reference's) leaves rounding noise of
        # ~1e-7 where the exact result is 0; torch's FFT leaves none, past atol 1e-7
        raise NotLowerable("a float32 complex inverse DFT rounds as numpy's single-precision FFT only")
    return ctx.extern("dft", [x, dft_length, axis], [out_type(node)], where=node.describe(),
                      inverse=bool(a["inverse"]), onesided=bool(a["onesided"]))


@register_lowering("STFT")
def _lower_stft(ctx, node, ins):
    x, frame_step, window, frame_length = (ins + [None] * 4)[:4]
    if x.dtype not in FLOATS or len(x.shape) != 3:
        raise NotLowerable("not a float [batch, length, 1 or 2] signal")
    return ctx.extern("stft", [x, frame_step, window, frame_length], [out_type(node)], where=node.describe(),
                      onesided=bool(attrs(node)["onesided"]))


def _lower_window(kind: str):
    def lower(ctx, node, ins):
        dtype, shape = out_type(node)
        if dtype not in TORCH_FLOATS:
            raise NotLowerable(f"a {dtype.name} window")
        return ctx.extern("window", ins, [(dtype, shape)], where=node.describe(), kind=kind,
                          periodic=bool(attrs(node)["periodic"]))
    return lower


for _op, _kind in _WINDOWS.items():
    register_lowering(_op)(_lower_window(_kind))


@register_lowering("MelWeightMatrix")
def _lower_mel_weight_matrix(ctx, node, ins):
    dtype, shape = out_type(node)
    if dtype not in TORCH_FLOATS:
        raise NotLowerable(f"a {dtype.name} matrix")
    return ctx.extern("mel_weight_matrix", ins, [(dtype, shape)], where=node.describe())
