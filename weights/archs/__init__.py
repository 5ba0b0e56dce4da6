"""Architectures that timm and torchvision lack; importing this package registers them."""
from weights.archs import blazeface, efficientnet, mesonet, mtcnn, temporal, video3d, wsdan  # noqa: F401
