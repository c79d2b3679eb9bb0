"""Small image trees built in tmp_path for the data tests (PNG where exact pixels matter)."""

import os

import cv2
import numpy as np
import pytest


def _write_rgb(path, rgb, flags=()):
    """Write an RGB uint8/uint16 array with OpenCV (which expects BGR)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    assert cv2.imwrite(str(path), np.ascontiguousarray(image), list(flags))


@pytest.fixture
def write_rgb():
    return _write_rgb


@pytest.fixture
def crop_tree(tmp_path):
    """3 identities x 4 aligned 112x96 PNG crops; each image's pixels are unique to it.

    Returns (root, {relative_path: rgb array}).
    """
    rng = np.random.default_rng(0)
    images = {}
    for person in ("Alice", "Bob", "Carol"):
        for k in range(4):
            rgb = rng.integers(0, 256, (112, 96, 3), dtype=np.uint8)
            relpath = f"{person}/{person}_{k:04d}.png"
            _write_rgb(tmp_path / "crops" / relpath, rgb)
            images[relpath] = rgb
    return tmp_path / "crops", images
