"""Signal ops: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix. Schemas,
type functions and references are ONNX's; the lowerings are externs
(ember/runtime/externs_signal.py) that read the lengths, axes and sizes fed at run
time and check what they give against the output's declared type."""

from __future__ import annotations

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, attrs, out_type, register_lowering
from .image import TORCH_FLOATS
from ..registry import get_op
from ._geometry import floor_div
from ._symbolic import contents, dtype_of, shape_of, tensor
from .onnx_standard import standard_op

_WINDOWS = {"HannWindow": "hann", "HammingWindow": "hamming", "BlackmanWindow": "blackman"}
for _op in ("DFT", "STFT", "MelWeightMatrix", *_WINDOWS):
    standard_op(_op)


# A [batch, length] signal, the spec's [batch, length, 1] without its trailing 1: exporters
# write it (onnx-asr's front-ends) and onnxruntime takes it; ember reads it as the spec's.
def _stft_signal_infer(delegate):
    """onnx's type function, or where it says nothing (a symbolic length), ONNX's
    [batch, floor((length - frame)/step) + 1, bins, 2] from constant step and frame."""
    def scalar(i, ins, node):
        if len(ins) <= i or ins[i] is None:
            return None
        value = contents(ins[i])
        if value is None and node.inputs[i] is not None and node.inputs[i].const is not None:
            value = [int(v) for v in node.inputs[i].const.reshape(-1)]
        return value[0] if value and len(value) == 1 and isinstance(value[0], int) else None

    def infer(node, ins):
        x = shape_of(ins[0]) if ins else None
        if x is not None and len(x) == 2:
            ins = [tensor(dtype_of(ins[0]), (*x, 1)), *ins[1:]]
            x = shape_of(ins[0])
        results = list(delegate(node, ins))
        if (results and results[0] is not None and shape_of(results[0]) is not None) or x is None or len(x) != 3:
            return results
        window = shape_of(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        step, length = scalar(1, ins, node), scalar(3, ins, node)
        if length is None and window is not None and isinstance(window[0], int):
            length = window[0]
        if step is None or length is None:
            return results
        onesided = get_op("STFT").attr(node, "onesided")
        bins = length // 2 + 1 if onesided else length
        return [tensor(dtype_of(ins[0]), (x[0], floor_div(x[1] - length, step) + 1, bins, 2))]
    return infer


def _stft_signal_reference(delegate):
    def prepare(node):
        run = delegate(node)
        return lambda x, *rest: run(x[..., None] if x.ndim == 2 else x, *rest)
    return prepare


get_op("STFT").infer = _stft_signal_infer(get_op("STFT").infer)
get_op("STFT").reference = _stft_signal_reference(get_op("STFT").reference)


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
    if x.dtype in FLOATS and len(x.shape) == 2:  # [batch, length]: the spec's [batch, length, 1]
        x = ctx.alias(x, (*x.shape, 1))
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
