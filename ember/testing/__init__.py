"""Tools for testing ember and what is built on it (pass and kernel authors):
hypothesis strategies for random graphs and inputs, `check_pass`, and the ONNX
conformance harness (`ember.testing.conformance`)."""

from .checks import check_pass
from .strategies import feeds_for, graphs, graphs_and_feeds

__all__ = ["check_pass", "feeds_for", "graphs", "graphs_and_feeds"]
