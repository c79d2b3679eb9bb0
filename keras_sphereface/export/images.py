"""Image batches for the exported embedders: validation and aligned-face folders.

Every embedder (Keras, SavedModel, LiteRT) takes the same input: aligned RGB faces,
uint8 [N, H, W, 3] with 0..255 values, of the model's `input_size` = (H, W).
"""

import os

import numpy as np

from keras_sphereface.alignment.detect import UnreadableImage, read_image
from keras_sphereface.errors import UserInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def check_image_batch(images, input_size):
    """Return `images` as a uint8 array [N, H, W, 3] of `input_size`, or raise UserInputError."""
    images = np.asarray(images)
    height, width = input_size
    if images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise UserInputError(
            f"Expected aligned RGB faces of shape [N, {height}, {width}, 3]. "
            f"Received: an array of shape {list(images.shape)}"
        )
    if images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise UserInputError(
                f"Expected pixel values in 0..255. Received: values in "
                f"[{images.min()}, {images.max()}] ({images.dtype})"
            )
        images = np.round(images).astype(np.uint8)
    return images


def read_aligned_faces(folder, input_size, limit=None):
    """Read up to `limit` aligned face crops (sorted by path) below `folder` as uint8 RGB.

    The crops must already have the model's `input_size` (what `cli/main.py align` writes);
    a file of another size is an error that names it, never silently resized.
    """
    if not os.path.isdir(folder):
        raise UserInputError(f"Expected a folder of aligned face images. Received: {folder}")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )[:limit]
    if not paths:
        raise UserInputError(
            f"Expected image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}. Received: none"
        )
    height, width = input_size
    faces = []
    for path in paths:
        try:  # the project's one reader: catches truncated files, converts gray/RGBA/16-bit
            image, _ = read_image(path)
        except UnreadableImage as error:
            raise UserInputError(f"Expected a readable image. Received: {path} ({error})") from None
        if image.shape[:2] != (height, width):
            raise UserInputError(
                f"Expected aligned face crops of {height}x{width} (HxW; align them first with "
                f"`cli/main.py align`). Received: {image.shape[0]}x{image.shape[1]} in {path}"
            )
        faces.append(image)
    return np.stack(faces)


def lfw_faces(lfw_dir, input_size, count=8, start=0):
    """`count` real LFW faces as aligned uint8 crops of `input_size`, for parity checks.

    The first image of each person in sorted order, from the `start`-th person on, aligned by
    `alignment.align_image` with the LFW landmarks file shipped with the package, or, in an
    install without it, with the fallback landmarks (mean LFW landmarks at the image centre).
    """
    from keras_sphereface.alignment import align_image, lfw_landmarks_path, read_landmarks_file

    images_dir = os.path.join(os.fspath(lfw_dir), "lfw-deepfunneled")
    if not os.path.isdir(images_dir):
        raise UserInputError(f"Expected an LFW folder with lfw-deepfunneled/. Received: {lfw_dir}")
    landmarks_file = lfw_landmarks_path()
    landmarks = read_landmarks_file(landmarks_file) if os.path.isfile(landmarks_file) else {}
    faces = []
    for person in sorted(os.listdir(images_dir))[start : start + count]:
        relpath = f"{person}/{person}_0001.jpg"
        record, crop = align_image(
            os.path.join(images_dir, relpath), relpath, size=input_size, landmarks_table=landmarks
        )
        if crop is None:
            raise UserInputError(f"Expected a readable LFW image. Received: {relpath} ({record})")
        faces.append(crop)
    return np.stack(faces)
