"""Graph passes: the `Pass` contract, the pass manager, the O0-O3 pipelines, and every
built-in pass (one file each). Third parties register with `register_pass` or the
`ember.passes` entry-point group.

The names below load on first use (PEP 562), and the built-in passes register when the
registry is first imported (registry.py): `ember.load` needs `PassStats` alone, and
importing every pass imports the op registry, onnx and ml_dtypes."""

__all__ = ["Pass", "PassResult", "PassManager", "PassStats", "PIPELINES", "build_pipeline",
           "pipeline_names", "get_pass", "register_pass", "registered_passes", "Match", "Rewrite",
           "RewritePass", "apply_rewrites"]

_HOME = {"Pass": ".base", "PassResult": ".base", "PassManager": ".manager", "PassStats": ".manager",
         "PIPELINES": ".pipelines", "build_pipeline": ".pipelines", "pipeline_names": ".pipelines",
         "get_pass": ".registry", "register_pass": ".registry", "registered_passes": ".registry",
         "Match": ".rewriter", "Rewrite": ".rewriter", "RewritePass": ".rewriter", "apply_rewrites": ".rewriter"}


def __getattr__(name: str):
    import importlib
    import importlib.util

    home = _HOME.get(name)
    if home is not None:
        value = getattr(importlib.import_module(home, __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a pass's module, as `ember.passes.fuse_gelu`
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
