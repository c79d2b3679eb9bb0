"""Sphere-N face backbones (SphereFace, CVPR 2017) and a name registry."""

from keras_sphereface.backbones.registry import get_backbone, list_backbones
from keras_sphereface.backbones.sphere import (
    sphere4,
    sphere10,
    sphere20,
    sphere36,
    sphere64,
    sphere_net,
)

__all__ = [
    "get_backbone",
    "list_backbones",
    "sphere4",
    "sphere10",
    "sphere20",
    "sphere36",
    "sphere64",
    "sphere_net",
]
