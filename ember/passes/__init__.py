"""Graph passes: the `Pass` contract, the pass manager, the O0-O3 pipelines, and every
built-in pass (one file each). Third parties register with `register_pass` or the
`ember.passes` entry-point group."""

from . import (  # noqa: F401  (importing registers them)
    canonicalize, channels_last, common_subexpressions, dead_code, expand_ops, fold_constants, fuse_attention,
    fuse_bias_activation, fuse_conv, fuse_gelu, fuse_linear, fuse_norms, fuse_qkv, fuse_rotary, fuse_silu,
    fuse_skip_layernorm,
)
from .base import Pass, PassResult
from .manager import PassManager, PassStats
from .pipelines import PIPELINES, build_pipeline, pipeline_names
from .registry import get_pass, register_pass, registered_passes
from .rewriter import Match, Rewrite, RewritePass, apply_rewrites

__all__ = ["Pass", "PassResult", "PassManager", "PassStats", "PIPELINES", "build_pipeline",
           "pipeline_names", "get_pass", "register_pass", "registered_passes", "Match", "Rewrite",
           "RewritePass", "apply_rewrites"]
