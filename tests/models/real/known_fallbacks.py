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
    "openwakeword/silero_vad": Fallbacks(
        {"If": 1},
        "the outer If (sample rate 16k or 8k) has an inner If whose two branches give outputs of "
        "different rank, which no kernel's buffers can hold; the If runs on the reference, its "
        "bodies' LSTMs and convolutions inside it too"),
    "onnx-asr/wespeaker": Fallbacks(
        {"DFT": 1},
        "the Scan's frames output keeps the file's dim, a symbol named after a fraction "
        "(Max_0__N___Mod_N___80__160____240__160, from 'Max(0, N - Mod(N + 80, 160) - 240)/160', which "
        "sympy cannot prove whole, so it stays a name) that no input binds; the frames broadcast "
        "against the computed expression as Max(name, expression), and the DFT reading them has "
        "'a size known only when it runs'"),
}
