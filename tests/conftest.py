import pathlib

import pytest


@pytest.fixture(scope="session")
def minilm_onnx() -> pathlib.Path:
    """all-MiniLM-L6-v2 exported to ONNX (dynamic batch/seq), cached under the ember cache."""
    from ember import _builtin

    return _builtin.export_minilm()
