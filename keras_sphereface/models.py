"""Training model = backbone + MarginSoftmax; the embedding model is the backbone inside it.

`build_training_model` nests the backbone as one layer, so the embedding model shares the
trained weights and comes back with `embedding_model(model)`; `load_embedding_model` does
the same from a saved `.keras` file or a training run directory.
"""

import os
import zipfile

import keras

from keras_sphereface.backbones import get_backbone
from keras_sphereface.errors import UserInputError
from keras_sphereface.margins import MarginSoftmax

CHECKPOINT_NAME = "checkpoint.keras"


def build_training_model(
    backbone, num_classes, mode="sphereface", margin=None, scale=None, **margin_options
):
    """Inputs {"images": RGB pixels (B, H, W, 3), "labels": int (B,)} → float32 logits (B, C).

    Args:
        backbone: a backbone `keras.Model` (images → embedding) or a name for `get_backbone`.
        num_classes: number of identities C.
        mode, margin, scale, **margin_options: passed to `MarginSoftmax` (e.g. "sphereface"
            with m=4 and λ annealing, "cosface", "arcface").

    The logits carry the margin on the true class during training (the labels input feeds
    it); train with `SparseCategoricalCrossentropy(from_logits=True)`.
    """
    if isinstance(backbone, str):
        backbone = get_backbone(backbone)
    images = keras.Input(shape=backbone.input_shape[1:], name="images")
    labels = keras.Input(shape=(), dtype="int32", name="labels")
    embeddings = backbone(images)
    logits = MarginSoftmax(
        num_classes, mode=mode, margin=margin, scale=scale, name="margin_softmax", **margin_options
    )([embeddings, labels])
    return keras.Model(
        {"images": images, "labels": labels}, logits, name=f"{backbone.name}_{mode}"
    )


def embedding_model(model):
    """The backbone of a training model, or `model` itself when it already is a backbone."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested:
        return model
    if len(nested) > 1:
        raise ValueError(
            f"Expected a training model with one nested backbone. Received: {model.name!r} "
            f"with {[layer.name for layer in nested]}"
        )
    return nested[0]


def load_embedding_model(path):
    """The embedding (backbone) model from a `.keras` file or a training run directory.

    A run directory holds `checkpoint.keras` (the full training model); the margin head and
    the optimizer state are dropped, the backbone's weights are those of the checkpoint.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not (os.path.isfile(path) and path.endswith(".keras")):
        raise UserInputError(
            f"Expected a .keras model file or a training run directory holding "
            f"{CHECKPOINT_NAME}. Received: {path!r}"
        )
    return embedding_model(load_model_file(path, compile=False))


def load_model_file(path, compile=True):
    """`keras.saving.load_model`, with a file that is not a Keras model (text, empty, another
    zip, a torn copy) reported as a `UserInputError` naming it."""
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise UserInputError(
            f"Expected a Keras model file (a .keras zip written by model.save). "
            f"Received: {os.fspath(path)!r}, which cannot be loaded ({type(error).__name__}: "
            f"{error})"
        ) from None
