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


def _dft_infer(delegate):
    """The signal's shape with the transformed axis `dft_length` long (half and the
    middle bin when onesided, the inverse of a onesided one the whole length) and the
    last 2 (1 for the real result of an inverse onesided one), where the length and axis
    are constants: onnx's type function keeps a dim it cannot compute (wespeaker's frames
    count, a size of the input) as the declared name, which no input binds, and the DFT
    then ran on the fallback."""
    def scalar(i, ins):
        value = contents(ins[i]) if len(ins) > i and ins[i] is not None else None
        return value[0] if value and len(value) == 1 else None

    def infer(node, ins):
        x = shape_of(ins[0]) if ins and ins[0] is not None else None
        axis = scalar(2, ins) if len(ins) > 2 and ins[2] is not None else -2
        if x is None or len(x) < 2 or not isinstance(axis, int) or not -len(x) <= axis < len(x) - 1:
            return delegate(node, ins)
        axis %= len(x)
        a = get_op("DFT")
        inverse, onesided = a.attr(node, "inverse"), a.attr(node, "onesided")
        length = scalar(1, ins) if len(ins) > 1 and ins[1] is not None else None
        if length is None:
            if len(ins) > 1 and ins[1] is not None:
                return delegate(node, ins)
            length = 2 * (x[axis] - 1) if inverse and onesided else x[axis]
        if inverse and onesided:
            bins, last = length, 1
        else:
            bins, last = (floor_div(length, 2) + 1 if onesided else length), 2
        shape = (*x[:axis], bins, *x[axis + 1:-1], last)
        return [tensor(dtype_of(ins[0]), shape)]
    return infer


get_op("DFT").infer = _dft_infer(get_op("DFT").infer)


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
    product = _dft_as_product(ctx, node, x, dft_length, axis, a)
    if product is not None:
        return [product]
    return ctx.extern("dft", [x, dft_length, axis], [out_type(node)], where=node.describe(),
                      inverse=bool(a["inverse"]), onesided=bool(a["onesided"]))


_DFT_PRODUCT_LENGTH = 512  # the longest transform run as a product with the DFT matrix


def _dft_as_product(ctx, node, x, dft_length, axis, a):
    """The forward DFT of a real float32 signal along the axis before the last, of a
    constant length of at most `_DFT_PRODUCT_LENGTH`, as one GEMM of the frames with the
    [length, 2 * bins] matrix of cosines and negated sines (interleaved: the output's
    [..., bins, 2] as it is), zero-padding or truncating as dft_length says: wespeaker's
    98 frames of 400 took 0.42 ms on torch's FFT (in double precision, one call), ~0.1 as
    a product. None where that does not apply."""
    import numpy as np

    from ._lowering import constant_ints, constant_linear

    def scalar(i):  # the one integer node input i holds before anything runs, else None
        values = constant_ints(ctx, node.inputs[i])
        return values[0] if values and len(values) == 1 else None

    rank = len(x.shape)
    given_axis = scalar(2) if axis is not None else -2
    length = scalar(1) if dft_length is not None else x.shape[-2]
    if (a["inverse"] or x.dtype != DType.float32 or x.shape[-1] != 1 or not isinstance(given_axis, int)
            or given_axis % rank != rank - 2 or not isinstance(length, int) or not isinstance(x.shape[-2], int)
            or not 0 < length <= _DFT_PRODUCT_LENGTH):
        return None
    dtype, shape = out_type(node)
    bins = length // 2 + 1 if a["onesided"] else length
    if tuple(shape[-2:]) != (bins, 2) or dtype != DType.float32:
        return None
    taken = min(length, x.shape[-2])  # samples past the length are dropped, missing ones are 0
    angle = 2 * np.pi * np.outer(np.arange(taken), np.arange(bins)) / length
    kn = np.stack([np.cos(angle), -np.sin(angle)], axis=-1).reshape(taken, 2 * bins)
    lead = tuple(x.shape[:-2])
    signal = ctx.alias(x, (*lead, x.shape[-2]))
    frames = signal if taken == x.shape[-2] else ctx.pointwise((*lead, taken), DType.float32, signal.load, cost=1)
    rows = constant_linear(ctx, frames, kn, None, "", (*lead, 2 * bins), "dft_matrix_kn")
    return ctx.alias(rows, tuple(shape))


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
