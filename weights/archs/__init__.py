"""Architectures that timm and torchvision lack; importing this package registers them."""
from weights.archs import (  # noqa: F401
    blazeface,
    efficientnet,
    mesonet,
    mtcnn,
    retinaface,
    team_efficientnets,
    temporal,
    video3d,
    wsdan,
)
