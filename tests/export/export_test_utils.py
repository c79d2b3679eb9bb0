"""Helpers of the export tests, importable by them and by the subprocesses they start on
another backend: a tiny real backbone and the independent NumPy reference for normalized
embeddings."""

import keras
import numpy as np

INPUT_SHAPE = (112, 96, 3)
EMBEDDING_DIM = 32


def build_tiny_backbone(seed=0, batch_norm=False):
    """sphere10 at 1/8 width (8..64 channels, with residual units) and a 32-d embedding;
    `batch_norm`: the batch-norm variant, its moving statistics set away from 0 and 1 (so an
    export that normalized with the batch's statistics, or none, would show)."""
    from keras_sphereface.backbones import get_backbone

    keras.utils.set_random_seed(seed)
    model = get_backbone(
        "sphere10",
        width_multiplier=0.125,
        embedding_dim=EMBEDDING_DIM,
        input_shape=INPUT_SHAPE,
        batch_norm=batch_norm,
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [gamma, beta, rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, variance.shape)]
            )
    return model


def unit_rows(x):
    """Independent reference: rows divided by their Euclidean norm, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
