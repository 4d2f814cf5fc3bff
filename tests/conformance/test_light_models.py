"""The light CNN models shipped in onnx/backend/test/data/light, against their shipped
outputs, fed the inputs onnx's backend runner generates for them (arange / n)."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ember

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem for p in LIGHT.glob("*.onnx"))


def test_all_nine_light_models_are_here():
    assert len(MODELS) == 9, MODELS


@pytest.mark.parametrize("name", MODELS)
def test_light_model(name):
    path = LIGHT / f"{name}.onnx"
    model = ember.compile(os.fspath(path))
    (info,) = model.inputs
    n = int(np.prod(info.shape))
    x = (np.arange(n).reshape(info.shape) / n).astype(np.float32)
    (out,) = model.run({info.name: x}).values()
    expected = numpy_helper.to_array(onnx.load_tensor(os.fspath(LIGHT / f"{name}_output_0.pb")))
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-7)
