"""Face detection (MTCNN) and 5-point similarity alignment onto the SphereFace template.

- `warp`: the template, `similarity_transform`, `align_face(image, landmarks, size)`.
- `landmarks`: the landmarks file (`read_landmarks_file`, `write_landmarks_file`).
- `detect`: robust image reading, `FaceDetector` (MTCNN), the central face, the fallback.
- `folder`: `align_folder(src, dst)`, resumable tree alignment with a CSV report.
- `lfw_landmarks_path()`: the shipped landmarks of LFW deep-funneled (no detection needed).

Nothing here imports TensorFlow until a `FaceDetector` first runs.
"""

import os

from keras_sphereface.alignment.detect import FaceDetector, fallback_landmarks, read_image
from keras_sphereface.alignment.folder import align_folder, align_image, read_fallback_paths
from keras_sphereface.alignment.landmarks import read_landmarks_file, write_landmarks_file
from keras_sphereface.alignment.warp import (
    align_face,
    parse_size,
    similarity_transform,
    template_for,
)

__all__ = [
    "FaceDetector",
    "align_face",
    "align_folder",
    "align_image",
    "fallback_landmarks",
    "lfw_landmarks_path",
    "parse_size",
    "read_fallback_paths",
    "read_image",
    "read_landmarks_file",
    "similarity_transform",
    "template_for",
    "write_landmarks_file",
]

LFW_LANDMARKS_NAME = "lfw_deepfunneled_landmarks.txt.gz"


def lfw_landmarks_path():
    """Path of the shipped MTCNN landmarks of all 13,233 LFW deep-funneled images.

    Keys are `Person_Name/Person_Name_0001.jpg` relative to `lfw-deepfunneled/`; read it with
    `read_landmarks_file`. How it was produced: its header and resources/README.md.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "resources", LFW_LANDMARKS_NAME)
