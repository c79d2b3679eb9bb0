"""keras-sphereface: SphereFace-family deep hypersphere face recognition for Keras 3.

The public API. Names are imported on first use so that `import keras_sphereface` stays
cheap and the core (margins, backbones, models) works on the JAX and PyTorch backends
without TensorFlow installed; only the TF-specific parts (tf.data, export) need it.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC_API = {
    "MarginSoftmax": "keras_sphereface.margins",
    "UserInputError": "keras_sphereface.errors",
    "align_face": "keras_sphereface.alignment.warp",
    "get_backbone": "keras_sphereface.backbones",
    "list_backbones": "keras_sphereface.backbones",
    "build_training_model": "keras_sphereface.models",
    "embedding_model": "keras_sphereface.models",
    "load_embedding_model": "keras_sphereface.models",
    "train": "keras_sphereface.training",
    "resume": "keras_sphereface.training",
    "align_folder": "keras_sphereface.alignment",
    "FaceDetector": "keras_sphereface.alignment",
    "lfw_landmarks_path": "keras_sphereface.alignment",
    "ImageIndex": "keras_sphereface.data",
    "scan_identity_folder": "keras_sphereface.data",
    "read_list_file": "keras_sphereface.data",
    "validate_images": "keras_sphereface.data",
    "check_labels": "keras_sphereface.data",
    "check_min_identities": "keras_sphereface.data",
    "save_label_map": "keras_sphereface.data",
    "load_label_map": "keras_sphereface.data",
    "steps_per_epoch": "keras_sphereface.data",
    "make_dataset": "keras_sphereface.data",
    "FaceDataset": "keras_sphereface.data",
    "evaluate_lfw": "keras_sphereface.evaluation",
    "load_embedder": "keras_sphereface.evaluation",
    "read_pairs": "keras_sphereface.evaluation",
    "verification_protocol": "keras_sphereface.evaluation",
    "export_saved_model": "keras_sphereface.export",
    "export_tflite": "keras_sphereface.export",
    "load_saved_model_embedder": "keras_sphereface.export",
    "LiteRTEmbedder": "keras_sphereface.export",
    "margin_softmax_distribution": "keras_sphereface.distribution",
    "memory_per_device": "keras_sphereface.distribution",
    "alignment_and_uniformity": "keras_sphereface.hypersphere",
    "alignment_loss": "keras_sphereface.hypersphere",
    "uniformity_loss": "keras_sphereface.hypersphere",
    "class_centre_directions": "keras_sphereface.hypersphere",
    "plot_features": "keras_sphereface.hypersphere",
}

__all__ = sorted(_PUBLIC_API)


def __getattr__(name):
    if name in _PUBLIC_API:
        return getattr(importlib.import_module(_PUBLIC_API[name]), name)
    raise AttributeError(f"module 'keras_sphereface' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
