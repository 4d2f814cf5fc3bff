"""Hand-written kernels for tests that call their wrappers (ember/runtime/native/) directly
rather than through a compiled program, which names the libraries it needs itself."""

from ember.codegen import handwritten
from ember.runtime import native


def install(*names: str) -> None:
    """Build (or find in the kernel cache) and install kernels `names`; each must build."""
    native.install({name: handwritten.build(name) for name in names})
    missing = [name for name in names if not native.available(name)]
    assert not missing, f"the hand-written kernels {missing} did not build"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo's first "flags" line; none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()
