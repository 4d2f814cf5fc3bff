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
UNKNOWN_PADDED_LENGTH = (
    "the frame count is an expression in a signal length that shape inference leaves unknown "
    "(floor(_unkN/160 - 16/5) + 1, _unkN from a node before the STFT whose length it cannot follow; "
    "nemo128's and kaldi's Where went once Pad's inference added constant pads to a symbolic length), "
    "met beside the file's name for it (T); the node reading both keeps the unbound name: "
    "'a size known only when it runs'")

FALLBACKS: dict[str, Fallbacks] = {
    "onnx-asr/whisper80": Fallbacks({"Transpose": 1}, UNKNOWN_PADDED_LENGTH),
}
