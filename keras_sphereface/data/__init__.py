"""Data: index identity folders / list files, label maps, and two loaders with one output.

`make_dataset` (tf.data, needs TensorFlow) and `FaceDataset` (a `keras.utils.PyDataset`
with OpenCV decode, no TensorFlow) both yield
`({"images": uint8 [B, H, W, 3], "labels": int32 [B]}, labels)` in the same per-epoch
order. Loaders are imported on first use so the index works without TensorFlow.
"""

import importlib

from keras_sphereface.data.index import (
    ImageIndex,
    check_jitter,
    check_labels,
    check_min_identities,
    epoch_order,
    jitter_matrices,
    load_label_map,
    read_list_file,
    save_label_map,
    scan_identity_folder,
    steps_per_epoch,
    validate_images,
)

_LOADERS = {"make_dataset": "keras_sphereface.data.pipeline", "FaceDataset": "keras_sphereface.data.pydataset"}


def __getattr__(name):
    if name in _LOADERS:
        return getattr(importlib.import_module(_LOADERS[name]), name)
    raise AttributeError(f"module 'keras_sphereface.data' has no attribute {name!r}")
