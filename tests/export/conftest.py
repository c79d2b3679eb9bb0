"""Fixtures for the export tests: a tiny backbone and real LFW faces aligned to 112x96."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from export_test_utils import INPUT_SHAPE, build_tiny_backbone, unit_rows  # noqa: E402


@pytest.fixture(scope="session")
def backbone():
    return build_tiny_backbone(seed=0)


@pytest.fixture(scope="session")
def lfw_faces_112x96(lfw_dir):
    """24 real LFW faces (aligned by keras_sphereface.export.images.lfw_faces): 8 to check
    parity on, 16 others to calibrate int8."""
    from keras_sphereface.export.images import lfw_faces

    return lfw_faces(lfw_dir, INPUT_SHAPE[:2], count=24)


@pytest.fixture(scope="session")
def parity_faces(lfw_faces_112x96):
    return lfw_faces_112x96[:8]


@pytest.fixture(scope="session")
def calibration_faces(lfw_faces_112x96):
    return lfw_faces_112x96[8:]


@pytest.fixture(scope="session")
def keras_reference(backbone):
    """Normalized float64 embeddings straight from the Keras model: e / |e|."""

    def reference(images):
        return unit_rows(backbone(np.asarray(images, dtype=np.float32), training=False))

    return reference
