"""Backbones by name: `get_backbone("sphere20", width_multiplier=0.25)`, `list_backbones()`."""

from keras_sphereface.backbones import sphere
from keras_sphereface.errors import UserInputError

_BACKBONES = {name: getattr(sphere, name) for name in sphere.UNITS_PER_STAGE}


def list_backbones():
    """Names accepted by `get_backbone`, shallowest first."""
    return list(_BACKBONES)


def get_backbone(name, **kwargs):
    """Build the backbone called `name`; `kwargs` go to its builder (input_shape, embedding_dim,
    width_multiplier, batch_norm, dtype, name)."""
    if name not in _BACKBONES:
        raise UserInputError(
            f"Expected a backbone name, one of {list_backbones()}. Received: {name!r}"
        )
    return _BACKBONES[name](**kwargs)
