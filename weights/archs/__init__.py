"""Architectures that timm and torchvision lack; importing this package registers them."""
from weights.archs import blazeface, mesonet, mtcnn, retinaface, temporal, video3d  # noqa: F401
