"""Tools for testing ember and what is built on it (pass and kernel authors):
hypothesis strategies for random graphs and inputs, `check_pass`, the ONNX
conformance harness (`ember.testing.conformance`), and a quantized language model's
perplexity on a fixed local text (`ember.testing.accuracy`)."""

from .checks import check_pass
from .strategies import feeds_for, graphs, graphs_and_feeds

__all__ = ["check_pass", "feeds_for", "graphs", "graphs_and_feeds"]
