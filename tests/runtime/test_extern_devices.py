"""Torch externs make their helper tensors on their data's device, not the host's.

A cuda program's data lives on the GPU; an extern that builds an index, a weight or a
zeros tensor on the host and mixes it with that data fails there ("Expected all tensors
to be on the same device"). No GPU here: the data goes on torch's "meta" device instead,
which computes shapes only and, for most ops, refuses host operands the same way, while
the small inputs an extern reads by value (regions) stay on the host, as a cuda program's
may not (the extern takes them to the host itself). The values are the conformance
suite's (tests/conformance), on the host.

(GridSample's and AffineGrid's host tensors, now made on the data's device too, pass on
meta either way: torch lets a host tensor take a meta operand in place and matmul mix the
two: no test here can see their fix, which only a cuda program on a GPU exercises.)"""

import pytest
import torch

from ember.runtime import externs_image  # noqa: F401  (registers the image externs)
from ember.runtime.externs import EXTERNS

META = torch.device("meta")


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_samples_on_the_feature_device(mode):
    x = torch.empty(2, 3, 10, 12, device=META)
    rois = torch.tensor([[0.0, 0.0, 6.0, 5.0], [1.0, 2.0, 9.5, 8.0]])
    y = torch.empty(2, 3, 2, 3, device=META)
    EXTERNS["roi_align"]({"spatial_scale": 1.0, "sampling_ratio": 2, "half_pixel": True, "mode": mode},
                         x, rois, torch.tensor([0, 1]), y)
    assert y.device == META
