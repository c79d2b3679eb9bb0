"""Export the embedding backbone: SavedModel for TF Serving, TFLite for LiteRT.

TensorFlow-only code (the TF Serving layout, the TFLite converter) lives here; the
embedders read the artefacts back with the project's embedder interface
(`embedder(uint8 [N, H, W, 3]) -> float32 [N, D]`, attribute `input_size` = (H, W)).
"""

from keras_sphereface.export.saved_model import (
    SavedModelEmbedder,
    describe_saved_model,
    export_saved_model,
    load_saved_model_embedder,
)
from keras_sphereface.export.tflite import LiteRTEmbedder, describe_tflite, export_tflite

__all__ = [
    "LiteRTEmbedder",
    "SavedModelEmbedder",
    "describe_saved_model",
    "describe_tflite",
    "export_saved_model",
    "export_tflite",
    "load_saved_model_embedder",
]
