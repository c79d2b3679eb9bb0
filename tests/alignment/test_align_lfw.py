"""Alignment quality on real LFW faces, and the shipped LFW landmarks file.

What "the warped landmarks lie within 1 px of the template" can mean for real faces: a
similarity transform has 4 degrees of freedom and 5 landmarks give 10 equations, so the
detected points land on the template only up to the least-squares residual (face shape and
pose; on LFW about 2-3 px mean, the nose the largest, see the alignment README paragraph).
So the test checks the two claims that do hold:

1. the transform is the least-squares optimum: its residual equals the one of an
   independent NumPy least-squares fit (to 1e-3 px);
2. the crop really puts the face where the transform says: MTCNN run again on the crop finds
   the landmarks within 1 px (median over the sample) of the warped detected landmarks
   (MTCNN may miss a face in a tight 112x96 crop: at most 2 of the 12 may go undetected).
"""

import os

import numpy as np
import pytest

from keras_sphereface.alignment import (
    FaceDetector,
    align_face,
    lfw_landmarks_path,
    read_image,
    read_landmarks_file,
    similarity_transform,
    template_for,
)
from keras_sphereface.alignment.detect import central_face

pytestmark = [pytest.mark.lfw, pytest.mark.slow]  # MTCNN load + ~50 detections: ~35 s on 2 cores
SAMPLE = 12
PAD = 40  # edge-replicated border around the crop so MTCNN sees the whole face


def _sample(lfw_dir):
    root = lfw_dir / "lfw-deepfunneled"
    people = sorted(os.listdir(root))
    picks = np.random.default_rng(7).choice(len(people), SAMPLE, replace=False)
    return [f"{people[i]}/{people[i]}_0001.jpg" for i in picks], root


def _least_squares_residual(points, template):
    """Residual of the best x' = a x - b y + tx, y' = b x + a y + ty fit, per point (px)."""
    rows, targets = [], []
    for (x, y), (u, v) in zip(points, template):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
    rows, targets = np.array(rows), np.array(targets)
    solution = np.linalg.lstsq(rows, targets, rcond=None)[0]
    return np.linalg.norm((rows @ solution - targets).reshape(5, 2), axis=1)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.mark.parametrize("size", [(112, 96), (112, 112)])
def test_warped_landmarks_are_least_squares_optimal_and_redetected_within_1px(
    lfw_dir, detector, size
):
    relpaths, root = _sample(lfw_dir)
    template = template_for(size).astype(np.float64)
    redetection = []
    for relpath in relpaths:
        image, _ = read_image(str(root / relpath))
        face = central_face(detector(image), image.shape)
        assert face is not None, relpath
        matrix = similarity_transform(face.landmarks, size).astype(np.float64)
        warped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
        np.testing.assert_allclose(
            np.linalg.norm(warped - template, axis=1),
            _least_squares_residual(face.landmarks.astype(np.float64), template),
            atol=1e-3,
        )
        crop = align_face(image, face.landmarks, size)
        padded = np.pad(crop, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
        again = central_face(detector(padded), padded.shape)
        if again is not None:  # MTCNN misses an occasional tight crop
            redetection.append(np.linalg.norm(again.landmarks - PAD - warped, axis=1))
    redetection = np.array(redetection)
    assert len(redetection) >= SAMPLE - 2
    assert np.median(redetection) <= 1.0, redetection.round(2)


def test_shipped_lfw_landmarks_cover_lfw_and_match_detection(lfw_dir, detector):
    path = lfw_landmarks_path()
    if not os.path.isfile(path):
        pytest.skip(f"no shipped LFW landmarks file at {path}")
    landmarks = read_landmarks_file(path)
    root = lfw_dir / "lfw-deepfunneled"
    on_disk = {f"{p}/{f}" for p in os.listdir(root) for f in os.listdir(root / p)}
    assert set(landmarks) == on_disk
    relpaths, _ = _sample(lfw_dir)
    for relpath in relpaths[:4]:
        image, _ = read_image(str(root / relpath))
        face = central_face(detector(image), image.shape)
        np.testing.assert_allclose(landmarks[relpath], face.landmarks, atol=0.011)
