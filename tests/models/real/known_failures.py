"""Real models ember cannot run correctly yet: each an expected failure (strict, so a
fix shows as an unexpected pass) with the stage it fails at and the first line of the
exception or the size of the error."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    stage: str   # "compile": ember.compile raises; "run": a run raises; "wrong": outputs differ
    error: str   # the exception's class name (AssertionError for "wrong"): xfail(raises=...)
    reason: str


STFT_RANK_2 = (
    "ExecutionError: node 'n12_2' (op STFT): ValueError: need at least one array to concatenate -- "
    "the signal is [batch, N] (the spec asks for [batch, N, 1]; onnxruntime accepts both) and the "
    "reference (onnx.reference's STFT) takes N from shape[-2] = batch, so it frames nothing")
DYNAMIC_QUANTIZE_LSTM = (
    "ModelError: node '/lstm/LSTM_quant' (op com.microsoft.DynamicQuantizeLSTM): unknown op "
    "'com.microsoft.DynamicQuantizeLSTM'; ember has no definition for it")

FAILURES: dict[str, Failure] = {
    "onnx-asr/nemo128": Failure("run", "ExecutionError", STFT_RANK_2),
    "onnx-asr/whisper80": Failure("run", "ExecutionError", STFT_RANK_2.replace("n12_2", "n13")),
    "onnx-asr/kaldi": Failure("run", "ExecutionError", STFT_RANK_2.replace("n12_2", "n24")),
    "openwakeword/silero_vad": Failure(
        "compile", "RecursionError",
        "RecursionError: maximum recursion depth exceeded while calling a Python object -- in "
        "control_flow._standalone, copy.deepcopy of the If's branch (a deep chain of Values and Nodes "
        "that refer to each other) while lowering the If"),
    "text2tashkeel/rawi.int8": Failure("compile", "ModelError", DYNAMIC_QUANTIZE_LSTM),
    "text2tashkeel/bilstm.int8": Failure("compile", "ModelError", DYNAMIC_QUANTIZE_LSTM),
    "rapidocr/ch_ppocr_mobile_v2.0_cls": Failure(
        "run", "InputError",
        "InputError: input 'x': expected f32[_unk0, 3, _, _], got f32[1, 3, 48, 192] (dim 3 is _, which "
        "input 'x' set to 48) -- the two '?' dims of [-1, 3, ?, ?] are taken as one symbol"),
}
