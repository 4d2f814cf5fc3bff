"""Checkers for pass authors: a pass must leave the IR valid and compute what the graph
computed before it ran (the reference interpreter is the oracle)."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph
from ..ir.interpreter import evaluate
from ..ir.printer import print_graph
from ..ir.verifier import verify


def check_pass(pass_or_pipeline, graph: Graph, feeds: dict[str, np.ndarray],
               rtol: float = 1e-5, atol: float = 1e-6):
    """Run the reference on `graph` before and after `pass_or_pipeline` (a Pass or a list
    of them), verify the IR after each, and assert every output is unchanged (same names,
    dtypes, shapes; values within rtol/atol). Returns the graph after the passes."""
    from ..passes import PassManager

    verify(graph)
    before_text = print_graph(graph)
    expected = evaluate(graph, feeds)
    passes = pass_or_pipeline if isinstance(pass_or_pipeline, list) else [pass_or_pipeline]
    graph, _ = PassManager(passes, verify=True).run(graph)
    actual = evaluate(graph, feeds)
    context = f"\n--- graph before ---\n{before_text}--- graph after ---\n{print_graph(graph)}"
    assert list(actual) == list(expected), f"outputs changed names: {list(expected)} -> {list(actual)}{context}"
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, \
            f"output {name!r}: {want.dtype}{list(want.shape)} became {got.dtype}{list(got.shape)}{context}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"output {name!r}{context}")
    return graph
