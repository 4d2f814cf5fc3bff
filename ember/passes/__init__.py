"""Graph passes: the `Pass` contract, the pass manager, the O0-O3 pipelines, and every
built-in pass (one file each). Third parties register with `register_pass` or the
`ember.passes` entry-point group."""

from . import (canonicalize, common_subexpressions, dead_code, fold_constants, fuse_gelu,  # noqa: F401
               fuse_linear)  # (importing registers them)
from .base import Pass, PassResult
from .manager import PassManager, PassStats
from .pipelines import PIPELINES, build_pipeline, pipeline_names
from .registry import get_pass, register_pass, registered_passes
from .rewriter import Match, Rewrite, RewritePass, apply_rewrites

__all__ = ["Pass", "PassResult", "PassManager", "PassStats", "PIPELINES", "build_pipeline",
           "pipeline_names", "get_pass", "register_pass", "registered_passes", "Match", "Rewrite",
           "RewritePass", "apply_rewrites"]
