"""ONNX node conformance, ember vs onnxruntime, in one run and one harness.

Every case from `onnx.backend.test.case.node.collect_testcases()` in the installed onnx
is compiled and run by each backend; outputs are compared with the case's own
tolerances (`ember.testing.conformance.check_case`). Prints a table and, with
--failures, why each case failed.

    python benchmarks/onnx_conformance.py [--failures]
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import onnx

import ember
from ember.testing.conformance import check_case, node_cases


def run_ember(model, feeds):
    return list(ember.compile(model, target="cpu").run(feeds).values())


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
    args = parser.parse_args()
    import onnxruntime

    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    total = len(node_cases())
    rows = []
    for label, version, run in (("ember", ember.__version__, run_ember),
                                ("onnxruntime", onnxruntime.__version__, run_onnxruntime)):
        passed, failures, seconds = score(run)
        rows.append((label, version, passed, failures, seconds))
    print(f"ONNX node conformance: onnx {onnx.__version__}, {total} cases, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| backend | version | passed | failed | seconds |\n|---|---|---|---|---|")
    for label, version, passed, failures, seconds in rows:
        print(f"| {label} | {version} | {passed} | {len(failures)} | {seconds:.0f} |")
    if args.failures:
        for label, _, _, failures, _ in rows:
            print(f"\n{label} failures:")
            for name, why in failures.items():
                print(f"  {name}: {why}")


if __name__ == "__main__":
    main()
