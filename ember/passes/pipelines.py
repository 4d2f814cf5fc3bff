"""The optimization levels, each a plain list of pass names, run in order.

A third-party pass joins a pipeline by name and position:
`build_pipeline(2, insert=[("my_fusion", "after", "fold_constants")])`."""

from __future__ import annotations

from ..errors import UnsupportedError
from .base import Pass
from .registry import get_pass

O0: list[str] = []
O1 = ["fold_constants", "canonicalize", "eliminate_dead_code", "flush_denormals"]
# flush_denormals last, after the fusions that scale weights (see its module).
# fold_constants twice: shapes that canonicalize and CSE make known (an If on a rank the
# exporter tested at run time, as silero VAD's) fold, and their branches inline, before fusion
O2 = ["expand_ops", "fold_qdq", "fold_constants", "canonicalize", "eliminate_common_subexpressions", "fold_constants",
      "fuse_norms", "fuse_gelu",
      "fuse_silu", "fuse_rotary", "fuse_linear", "fuse_attention", "fuse_qkv", "fuse_skip_layernorm",
      "fuse_bias_activation", "fuse_integer_matmul", "fuse_conv", "channels_last", "eliminate_common_subexpressions", "canonicalize",
      "eliminate_dead_code", "flush_denormals"]
O3 = list(O2)
PIPELINES = {0: O0, 1: O1, 2: O2, 3: O3}


def pipeline_names(opt_level: int, insert: list[tuple[str, str, str]] | None = None) -> list[str]:
    """Pass names of `opt_level`, with each (name, "before"|"after", anchor) inserted."""
    if opt_level not in PIPELINES:
        raise UnsupportedError(f"opt_level must be one of {sorted(PIPELINES)}, got {opt_level!r}")
    names = list(PIPELINES[opt_level])
    for name, where, anchor in insert or []:
        if where not in ("before", "after"):
            raise UnsupportedError(f"pass position must be 'before' or 'after', got {where!r}")
        if anchor not in names:
            raise UnsupportedError(f"cannot place {name!r} {where} {anchor!r}: pipeline O{opt_level} "
                                   f"is {names}")
        i = names.index(anchor)
        names.insert(i if where == "before" else i + 1, name)
    return names


def build_pipeline(opt_level: int, insert: list[tuple[str, str, str]] | None = None) -> list[Pass]:
    return [get_pass(name) for name in pipeline_names(opt_level, insert)]
