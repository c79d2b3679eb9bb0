"""Helpers of the export tests, importable by them and by the subprocesses they start on
another backend: a tiny real backbone and the independent NumPy reference for normalized
embeddings."""

import keras
import numpy as np

INPUT_SHAPE = (112, 96, 3)
EMBEDDING_DIM = 32


def build_tiny_backbone(seed=0):
    """sphere10 at 1/8 width (8..64 channels, with residual units) and a 32-d embedding."""
    from keras_sphereface.backbones import get_backbone

    keras.utils.set_random_seed(seed)
    return get_backbone(
        "sphere10", width_multiplier=0.125, embedding_dim=EMBEDDING_DIM, input_shape=INPUT_SHAPE
    )


def unit_rows(x):
    """Independent reference: rows divided by their Euclidean norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
