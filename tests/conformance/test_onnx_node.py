"""Every node test case shipped with the installed onnx package, through
`ember.compile(model, target="cpu").run`."""

import warnings

import numpy as np
import pytest

import ember
from ember.testing.conformance import check_case, node_cases

from .onnx_node_xfail import NOT_STRICT, XFAIL


def _params():
    for name in sorted(node_cases()):
        marks = []
        if name in XFAIL:
            marks.append(pytest.mark.xfail(reason=XFAIL[name], strict=name not in NOT_STRICT))
        yield pytest.param(name, marks=marks, id=name)


def _run_ember(model, feeds):
    return list(ember.compile(model, target="cpu").run(feeds).values())


@pytest.mark.parametrize("name", _params())
def test_node_case(name):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        check_case(node_cases()[name], _run_ember)


def test_xfail_list_names_real_cases():
    assert set(XFAIL) <= set(node_cases()), sorted(set(XFAIL) - set(node_cases()))
