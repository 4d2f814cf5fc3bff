"""Tools for testing ember and things built on it (pass and kernel authors):
`conformance` runs the onnx package's node test cases and compares outputs."""
