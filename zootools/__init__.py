"""Offline tooling of the model zoo: the published weights' sources, their converters, the default build and
the ONNX export. The runtime never imports it; `python -m zootools` runs it."""
