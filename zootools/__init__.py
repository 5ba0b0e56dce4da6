"""The model zoo's offline tooling, apart from the zoo (`weights/`, which ships): where the published weights come
from and their converters, the default build, the ONNX export, the DFDC teams' checkpoint importers and presets
(`importing/`, `presets.py`), and show-input. The runtime never imports it; `python -m zootools` runs it."""
