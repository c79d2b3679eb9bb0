"""Similarity-transform alignment onto the SphereFace 5-point template.

The template (W×H = 96×112) is the one of the SphereFace/CosFace releases:
left eye, right eye, nose tip, left and right mouth corners. For 112×112 crops
(ArcFace convention) every x is shifted by +8.

The transform is the least-squares similarity (rotation, uniform scale, translation)
from the detected landmarks to the template, in closed form (Umeyama 1991, reflection
excluded); OpenCV warps the image with it.
"""

import cv2
import numpy as np

from keras_sphereface.errors import UserInputError

TEMPLATE_112x96 = np.array(
    [
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041],
    ],
    dtype=np.float32,
)

SUPPORTED_SIZES = ((112, 96), (112, 112))


def template_for(size=(112, 96)):
    """The 5 template points (x, y) for a crop of `size` = (height, width)."""
    size = tuple(int(v) for v in size)
    if size not in SUPPORTED_SIZES:
        raise UserInputError(
            f"Expected a crop size in {SUPPORTED_SIZES} (height, width). Received: {size}"
        )
    offset = (size[1] - 96) / 2.0
    return TEMPLATE_112x96 + np.array([offset, 0.0], dtype=np.float32)


def parse_size(text):
    """Parse '112x96' into (112, 96), with a clear error for anything else."""
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UserInputError(
            f"Expected a crop size written HEIGHTxWIDTH, one of "
            f"{[f'{h}x{w}' for h, w in SUPPORTED_SIZES]}. Received: {text!r}"
        ) from None
    template_for((height, width))
    return height, width


def similarity_transform(landmarks, size=(112, 96)):
    """2×3 matrix of the least-squares similarity mapping `landmarks` (5×2, x,y) to the template."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    if not np.all(np.isfinite(src)):
        raise UserInputError(f"Expected 5 finite (x, y) landmarks. Received: {src.tolist()}")
    dst = template_for(size).astype(np.float64)
    src = src.astype(np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise UserInputError(f"Expected 5 distinct landmarks. Received: {src.tolist()}")
    u, sigma, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def align_face(image, landmarks, size=(112, 96)):
    """Warp `image` (H×W×3 uint8) so its 5 `landmarks` land on the template; returns a crop of `size`."""
    matrix = similarity_transform(landmarks, size)
    height, width = size
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
