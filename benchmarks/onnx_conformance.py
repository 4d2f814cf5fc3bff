"""ONNX node conformance, ember vs onnxruntime, in one run and one harness.

Every case from `onnx.backend.test.case.node.collect_testcases()` in the installed onnx
is compiled and run by each backend; outputs are compared with the case's own
tolerances (`ember.testing.conformance.check_case`). Prints a table and, with
--failures, why each case failed. For ember it also counts the passing cases that run
entirely on compiled kernels (generated or extern, no node on the reference fallback);
--fallbacks lists, per op and reason, the nodes that fell back.

    python benchmarks/onnx_conformance.py [--failures] [--fallbacks] [--ember-only]
"""

from __future__ import annotations

import argparse
import collections
import platform
import time
import warnings

import numpy as np
import onnx

import ember
from ember.testing.conformance import check_case, node_cases


class EmberRunner:
    """Runs cases through ember and remembers, per model, what fell back and why."""

    def __init__(self):
        self.fallbacks: dict[int, list[tuple[str, str, str]]] = {}  # id(model) -> (op, reason, dtypes)

    def __call__(self, model, feeds):
        compiled = ember.compile(model, target="cpu")
        if id(model) not in self.fallbacks:
            self.fallbacks[id(model)] = fallback_reasons(compiled)
        return list(compiled.run(feeds).values())


def fallback_reasons(compiled) -> list[tuple[str, str, str]]:
    """(op, reason, input dtypes) of each node of `compiled` on the reference fallback."""
    from ember.codegen.lowering import lower_graph
    from ember.ir.types import TensorType

    if compiled.program is None:
        return [("(whole graph)", "not lowerable: sequences or optionals cross the graph boundary", "")]
    if not compiled.stats.fallback_nodes:
        return []
    reasons = lower_graph(compiled.graph).fallback_reasons
    out = []
    for node in compiled.graph.nodes:
        if node.name in compiled.stats.fallback_nodes:
            dtypes = ",".join(v.type.dtype.name if isinstance(v.type, TensorType) else type(v.type).__name__
                              for v in node.inputs if v is not None)
            out.append((node.op, reasons.get(node.name, "?"), dtypes))
    return out


def run_onnxruntime(model, feeds):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def score(run) -> tuple[int, dict[str, str], float]:
    failures: dict[str, str] = {}
    start = time.perf_counter()
    for name, case in sorted(node_cases().items()):
        try:
            check_case(case, run)
        except Exception as e:  # noqa: BLE001 - a failing case is data here
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return len(node_cases()) - len(failures), failures, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failures", action="store_true", help="list each failing case with its error")
    parser.add_argument("--fallbacks", action="store_true",
                        help="list, per op and reason, the nodes of passing cases that fell back")
    parser.add_argument("--ember-only", action="store_true", help="skip onnxruntime")
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    total = len(node_cases())
    rows = []
    ember_run = EmberRunner()
    backends = [("ember", ember.__version__, ember_run)]
    if not args.ember_only:
        import onnxruntime

        backends.append(("onnxruntime", onnxruntime.__version__, run_onnxruntime))
    for label, version, run in backends:
        passed, failures, seconds = score(run)
        rows.append((label, version, passed, failures, seconds))
    print(f"ONNX node conformance: onnx {onnx.__version__}, {total} cases, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| backend | version | passed | failed | seconds |\n|---|---|---|---|---|")
    for label, version, passed, failures, seconds in rows:
        print(f"| {label} | {version} | {passed} | {len(failures)} | {seconds:.0f} |")
    ember_failures = rows[0][3]
    passing = {name: case for name, case in node_cases().items() if name not in ember_failures}
    reasons = {name: ember_run.fallbacks.get(id(case.model), []) for name, case in passing.items()}
    compiled = sum(1 for r in reasons.values() if not r)
    print(f"\nember: {compiled} of the {len(passing)} passing cases run entirely on compiled kernels "
          f"({100 * compiled / max(len(passing), 1):.1f}%)")
    if args.fallbacks:
        nodes = collections.Counter(r for rs in reasons.values() for r in rs)
        cases = collections.Counter(r for rs in reasons.values() for r in set(rs))
        print("\n| cases | nodes | op | reason | input dtypes |\n|---|---|---|---|---|")
        for (op, why, dtypes), n in cases.most_common():
            print(f"| {n} | {nodes[(op, why, dtypes)]} | {op} | {why} | {dtypes} |")
    if args.failures:
        for label, _, _, failures, _ in rows:
            print(f"\n{label} failures:")
            for name, why in failures.items():
                print(f"  {name}: {why}")


if __name__ == "__main__":
    main()
