"""Passes by name: ember's own, those registered with `register_pass`, and those that
installed packages advertise in the `ember.passes` entry-point group (each entry point
names a `Pass` subclass; its name is the pass's `name`)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from ..errors import UnsupportedError
from .base import Pass

ENTRY_POINT_GROUP = "ember.passes"
_PASSES: dict[str, Callable[[], Pass]] = {}
_entry_points_loaded = False
_builtin_loaded = False


def _load_builtin() -> None:
    """Import (and so register) ember's own passes, on the first lookup by name rather
    than with the package: `ember.load` needs only `PassStats`, and the passes import the
    op registry (onnx, ml_dtypes)."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    from . import (  # noqa: F401
        canonicalize, channels_last, common_subexpressions, dead_code, expand_ops, flush_denormals, fold_constants,
        fold_dynamic_quantization, fold_qdq,
        fuse_attention, fuse_integer_matmul, fuse_bias_activation, fuse_conv, fuse_gelu, fuse_linear, fuse_norms, fuse_qkv, fuse_rotary,
        fuse_silu, fuse_skip_layernorm, quantize_weights, shard_tensor_parallel,
    )


def register_pass(cls: type[Pass], *, replace: bool = False) -> type[Pass]:
    """Register a Pass subclass under its `name` (usable as a class decorator)."""
    if not cls.name:
        raise UnsupportedError(f"{cls.__name__} has no `name`")
    if not cls.__module__.startswith(__package__ + "."):
        _load_builtin()  # a third party's pass meets ember's own names, as it would have before
    if cls.name in _PASSES and not replace and _PASSES[cls.name] is not cls:
        raise UnsupportedError(f"a pass named {cls.name!r} is already registered")
    _PASSES[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must say which one it is
            raise UnsupportedError(f"entry point {ep.name!r} ({ep.value}) in group "
                                   f"{ENTRY_POINT_GROUP!r} failed to load: {e}") from e
        register_pass(cls, replace=True)


def get_pass(name: str) -> Pass:
    _load_builtin()
    if name not in _PASSES:
        _load_entry_points()
    try:
        return _PASSES[name]()
    except KeyError:
        raise UnsupportedError(f"unknown pass {name!r}; known passes: {', '.join(registered_passes())}") from None


def registered_passes() -> list[str]:
    _load_builtin()
    _load_entry_points()
    return sorted(_PASSES)

